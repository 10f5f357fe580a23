"""Pull-side OCI distribution client: resolve images and read their blobs.

Used by the controller and the node daemon. Standard library only and free
of sibling imports, so it is safe to vendor as a single file.
Limits: pull only (no push, no referrers); bearer and basic auth only
(identity tokens in Docker config files are ignored); HTTP/1.1 only; one
byte range per request; a blob stream is retried only until its headers
arrive; Docker schema 1 manifests are refused; for a single (non-index)
manifest the platform is read from its config blob.
"""
# Copyright 2026 The Hermes authors. SPDX-License-Identifier: Apache-2.0

import base64
import dataclasses
import email.utils
import hashlib
import http.client
import io
import ipaddress
import json
import logging
import os
import platform as _platform
import random
import re
import ssl
import subprocess
import threading
import time
import urllib.parse

__version__ = "0.1.0"
__all__ = [
    "AuthError", "BlobReader", "Client", "DOCKER_LIST", "DOCKER_MANIFEST",
    "DigestError", "Image", "Keychain", "MEDIA_TYPES", "Manifest",
    "ManifestError", "NotFoundError", "OCI_INDEX", "OCI_MANIFEST",
    "RangeError", "Reference", "RegistryError", "default_platform",
    "parse_platform", "parse_reference",
]

log = logging.getLogger(__name__)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)
_INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
_SCHEMA1_TYPES = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)

DOCKER_HUB = "registry-1.docker.io"
_HUB_ALIASES = ("docker.io", "index.docker.io", DOCKER_HUB)
# Docker stores Hub credentials under this legacy key and passes it to
# credential helpers.
_HUB_AUTH_KEY = "https://index.docker.io/v1/"

# Manifests are small; the cap keeps a hostile registry from filling memory.
MANIFEST_MAX = 4 << 20
BLOB_MAX_DEFAULT = 64 << 20
# Error bodies are only read for their OCI error code.
ERROR_BODY_MAX = 64 << 10
TOKEN_BODY_MAX = 1 << 20
MAX_REDIRECTS = 10
RETRY_AFTER_MAX_S = 60.0
TOKEN_DEFAULT_TTL_S = 60
HELPER_TIMEOUT_S = 30
# Idle keep-alive connections kept per (scheme, host, port).
POOL_IDLE_MAX = 16
_READ_CHUNK = 1 << 20

_RETRY_STATUSES = (429, 500, 502, 503, 504)
_REDIRECTS = (301, 302, 303, 307, 308)
_TRANSIENT = (ConnectionError, TimeoutError, http.client.IncompleteRead)
# Errors that mean a pooled keep-alive connection was closed by the peer.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError,
          ConnectionResetError, ConnectionAbortedError)

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(r"%s(?:/%s)*" % (_COMPONENT, _COMPONENT))
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DOMAIN_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?")
_DIGEST_HEX = {"sha256": 64, "sha512": 128}
_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)')


class RegistryError(Exception):
    """A registry operation failed; data only.

    ``ref`` names what was asked for, ``status`` is the HTTP status and
    ``code`` the OCI error code, each None when unknown.
    """

    def __init__(self, message, ref=None, status=None, code=None):
        super().__init__(message)
        self.message = message
        self.ref = ref
        self.status = status
        self.code = code

    def __str__(self):
        text = " ".join(str(self.message).split())
        text = "%s: %s" % (self.ref, text) if self.ref else text
        detail = ["HTTP %d" % self.status] if self.status else []
        detail += [self.code] if self.code else []
        return "%s (%s)" % (text, ", ".join(detail)) if detail else text


class AuthError(RegistryError):
    """Credentials were refused, missing, or could not be obtained."""


class NotFoundError(RegistryError):
    """The registry has no such manifest or blob."""


class DigestError(RegistryError):
    """Content does not match its digest, or a digest is malformed."""


class RangeError(RegistryError):
    """A byte-range read was not answered with exactly the bytes asked."""


class ManifestError(RegistryError):
    """A manifest is unsupported, malformed, or lacks the platform."""


# -- references ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reference:
    """A parsed image reference; ``str()`` gives the canonical form."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self):
        return "%s/%s" % (self.registry, self.repository)

    def __str__(self):
        tag = ":" + self.tag if self.tag else ""
        digest = "@" + self.digest if self.digest else ""
        return self.name + tag + digest

    def with_digest(self, digest):
        _check_digest(digest, str(self))
        return dataclasses.replace(self, digest=digest)


def parse_reference(text):
    """Parse ``text`` the way Docker and containerd do."""
    if not isinstance(text, str) or not text or text != text.strip():
        raise RegistryError("invalid image reference %r" % (text,),
                            ref=text)
    rest, at, digest = text.partition("@")
    if at:
        _check_digest(digest, text)
    name, tag = _split_tag(rest, text)
    registry, repository = _split_name(name, text)
    if not tag and not digest:
        tag = "latest"
    return Reference(registry, repository, tag or None, digest or None)


def _split_tag(rest, text):
    # A colon after the last slash starts the tag; earlier ones are ports.
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon <= slash:
        return rest, None
    tag = rest[colon + 1:]
    if not _TAG_RE.fullmatch(tag):
        raise RegistryError("invalid tag %r" % tag, ref=text)
    return rest[:colon], tag


def _split_name(name, text):
    first, _, remainder = name.partition("/")
    if remainder and _looks_like_host(first):
        registry, path = first, remainder
    else:
        registry, path = DOCKER_HUB, name
    if not _DOMAIN_RE.fullmatch(registry):
        raise RegistryError("invalid registry host %r" % registry, ref=text)
    if registry in _HUB_ALIASES:
        registry = DOCKER_HUB
        path = path if "/" in path else "library/" + path
    _check_repository(path, text)
    return registry, path


def _looks_like_host(component):
    # Docker's rule for telling a registry host from a path component.
    return "." in component or ":" in component or component == "localhost"


def _check_repository(path, text):
    if not _REPO_RE.fullmatch(path) or len(path) > 255:
        raise RegistryError(
            "invalid repository name %r: use up to 255 lowercase letters, "
            "digits, '/' and '.', '_' or '-' separators" % path, ref=text)


def _check_digest(digest, ref=None):
    algorithm, _, hexpart = str(digest).partition(":")
    want = _DIGEST_HEX.get(algorithm)
    if want is None:
        raise DigestError("unsupported digest %r: want sha256:<64 hex> "
                          "or sha512:<128 hex>" % digest, ref=ref)
    if len(hexpart) != want or not re.fullmatch("[0-9a-f]+", hexpart):
        raise DigestError("malformed digest %r: want %s:<%d lowercase hex>"
                          % (digest, algorithm, want), ref=ref)
    return algorithm


def _compute_digest(data, algorithm="sha256"):
    return "%s:%s" % (algorithm, hashlib.new(algorithm, data).hexdigest())


# -- platforms ----------------------------------------------------------

_ARCH_ALIASES = {
    "x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64",
    "i386": "386", "i686": "386", "armhf": "arm", "armel": "arm",
}
_MACHINES = {
    "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64",
    "arm64": "arm64", "armv7l": "arm/v7", "armv6l": "arm/v6",
    "i386": "386", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x",
    "riscv64": "riscv64",
}


def parse_platform(text):
    """Split "os/arch[/variant]" into a tuple (os, arch, variant|None)."""
    parts = str(text).lower().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise RegistryError("bad platform %r: want os/arch[/variant]" % text)
    return (*parts, None)[:3]


def default_platform():
    """The host's platform in OCI terms, e.g. "linux/amd64"."""
    machine = _platform.machine().lower()
    arch = _MACHINES.get(machine, machine)
    return "%s/%s" % (_platform.system().lower() or "linux", arch)


def _normalize_platform(os_name, arch, variant):
    # Same equivalences as containerd: arm64 implies v8, arm implies v7.
    arch = _ARCH_ALIASES.get(arch, arch)
    if variant and variant.isdigit():
        variant = "v" + variant
    if arch == "arm64" and variant == "v8":
        variant = None
    if arch == "arm" and not variant:
        variant = "v7"
    return os_name, arch, variant


def _descriptor_platform(descriptor):
    plat = descriptor.get("platform") or {}
    if not isinstance(plat, dict):
        return None
    os_name = str(plat.get("os", "")).lower()
    arch = str(plat.get("architecture", "")).lower()
    if not os_name or not arch:
        return None
    return os_name, arch, (plat.get("variant") or None)


def _format_platform(parts):
    return "/".join(part for part in parts if part)


def _pick_manifest(index, wanted, ref_text):
    """Return the first index entry whose platform matches ``wanted``."""
    target = _normalize_platform(*parse_platform(wanted))
    seen = []
    for descriptor in index.get("manifests") or ():
        plat = _descriptor_platform(descriptor)
        if plat is None:
            continue
        seen.append(_format_platform(plat))
        if _normalize_platform(*plat) == target:
            return descriptor, _format_platform(plat)
    raise ManifestError(
        "no manifest for %s in the index (it has: %s)"
        % (wanted, ", ".join(seen) or "none"), ref=ref_text)


# -- credentials --------------------------------------------------------


def _normalize_host(key):
    """Map a config key such as "https://index.docker.io/v1/" to a host."""
    text = str(key).strip()
    parts = urllib.parse.urlsplit(text if "://" in text else "//" + text)
    host = parts.netloc.lower()
    return DOCKER_HUB if host in _HUB_ALIASES else host


def _helper_server(host):
    return _HUB_AUTH_KEY if host == DOCKER_HUB else host


def _decode_auth(entry):
    """Credentials of one ``auths`` entry, or None for a placeholder."""
    if not isinstance(entry, dict):
        return None
    if entry.get("auth"):
        try:
            text = base64.b64decode(entry["auth"]).decode("utf-8")
        except (ValueError, UnicodeDecodeError) as e:
            raise RegistryError("auth field is not base64 of user:password"
                                ) from e
        user, sep, password = text.partition(":")
        return (user, password) if sep else None
    if entry.get("username"):
        return entry["username"], entry.get("password", "")
    return None


def _run_helper(name, host):
    """Ask ``docker-credential-<name>`` for the credentials of ``host``."""
    program = "docker-credential-" + name
    try:
        done = subprocess.run(
            [program, "get"], input=_helper_server(host).encode(),
            capture_output=True, timeout=HELPER_TIMEOUT_S, check=False)
    except FileNotFoundError as e:
        raise AuthError("credential helper %s not found on PATH"
                        % program, ref=host) from e
    except subprocess.TimeoutExpired as e:
        raise AuthError("credential helper %s timed out after %gs"
                        % (program, HELPER_TIMEOUT_S), ref=host) from e
    return _helper_result(program, host, done)


def _helper_result(program, host, done):
    output = (done.stdout + done.stderr).decode("utf-8", "replace")
    if done.returncode != 0:
        if "credentials not found" in output.lower():
            return None
        first = (output.strip().splitlines() or ["no output"])[0][:200]
        raise AuthError("credential helper %s failed (exit %d): %s"
                        % (program, done.returncode, first), ref=host)
    try:
        answer = json.loads(done.stdout)
        return answer["Username"], answer["Secret"]
    except (ValueError, KeyError, TypeError) as e:
        raise AuthError("credential helper %s printed no "
                        "{Username, Secret} json" % program, ref=host) from e


class Keychain:
    """Registry credentials: static entries, then helpers, then a store.

    Hosts are normalized, so Docker Hub aliases share one entry.
    Credential helpers run only when ``get`` needs them.
    """

    def __init__(self):
        self._static = {}
        self._helpers = {}
        self._store = None

    def add(self, host, username, password):
        self._static[_normalize_host(host)] = (username, password)

    def get(self, host):
        host = _normalize_host(host)
        helper = self._helpers.get(host) or self._store
        if host in self._static or not helper:
            return self._static.get(host)
        return _run_helper(helper, host)

    def merge(self, other):
        """A new keychain holding both; ``other`` wins on conflicts."""
        merged = Keychain()
        for source in (self, other):
            merged._static.update(source._static)
            merged._helpers.update(source._helpers)
            merged._store = source._store or merged._store
        return merged

    @classmethod
    def from_docker_config(cls, path=None):
        """Load a Docker config.json; a missing file gives no entries."""
        path = path or _docker_config_path()
        try:
            with open(path, "rb") as f:
                config = json.load(f)
        except FileNotFoundError:
            return cls()
        except ValueError as e:
            raise RegistryError("docker config %s is not valid json: %s"
                                % (path, e)) from e
        return cls._from_config(config)

    @classmethod
    def from_secret(cls, secret_type, data):
        """Load a Kubernetes image pull Secret's ``data`` mapping."""
        if secret_type == "kubernetes.io/dockerconfigjson":
            config = _secret_json(data, ".dockerconfigjson")
        elif secret_type == "kubernetes.io/dockercfg":
            # The legacy format is the bare "auths" mapping.
            config = {"auths": _secret_json(data, ".dockercfg")}
        else:
            raise RegistryError("unsupported secret type %r: want "
                                "kubernetes.io/dockerconfigjson or "
                                "kubernetes.io/dockercfg" % secret_type)
        return cls._from_config(config)

    @classmethod
    def _from_config(cls, config):
        if not isinstance(config, dict):
            raise RegistryError("docker config must be a json object")
        keychain = cls()
        for key, entry in (config.get("auths") or {}).items():
            creds = _decode_auth(entry)
            if creds:
                keychain._static[_normalize_host(key)] = creds
        for key, name in (config.get("credHelpers") or {}).items():
            keychain._helpers[_normalize_host(key)] = name
        keychain._store = config.get("credsStore") or None
        return keychain


def _docker_config_path():
    folder = os.environ.get("DOCKER_CONFIG") or os.path.join(
        os.path.expanduser("~"), ".docker")
    return os.path.join(folder, "config.json")


def _secret_json(data, key):
    try:
        return json.loads(base64.b64decode(data[key]))
    except KeyError as e:
        raise RegistryError("secret has no %r key" % key) from e
    except ValueError as e:
        raise RegistryError("secret key %r is not base64 json" % key) from e


# -- results ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Manifest:
    data: bytes
    media_type: str
    digest: str


@dataclasses.dataclass(frozen=True)
class Image:
    """A platform manifest, resolved and verified."""

    ref: Reference
    digest: str
    media_type: str
    data: bytes
    manifest: dict
    config: dict
    layers: list
    platform: str
    index_digest: str | None = None


# -- HTTP plumbing ------------------------------------------------------


def _pool_key_and_target(url):
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = urllib.parse.urlunsplit(
        ("", "", parts.path or "/", parts.query, ""))
    return (parts.scheme, parts.hostname, port), target


def _host_port(registry):
    parts = urllib.parse.urlsplit("//" + registry)
    return parts.hostname, parts.port


def _is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _retry_after(value):
    """Seconds to wait from a Retry-After header, or None."""
    if not value:
        return None
    value = value.strip()
    seconds = float(value) if value.isdigit() else _until(value)
    if seconds is None:
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)


def _until(http_date):
    try:
        when = email.utils.parsedate_to_datetime(http_date)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - time.time()


def _parse_challenge(header):
    """Parse WWW-Authenticate into (scheme, params); scheme lowercased."""
    scheme, _, rest = header.strip().partition(" ")
    params = {}
    for key, value in _CHALLENGE_PARAM.findall(rest):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[key.lower()] = value
    return scheme.lower(), params


def _first_error_code_and_message(body):
    try:
        first = json.loads(body)["errors"][0]
        return first.get("code"), first.get("message")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None, None


class _Pool:
    """Idle keep-alive connections per (scheme, host, port); thread-safe."""

    def __init__(self, connect, idle_max=POOL_IDLE_MAX):
        self._connect = connect
        self._idle_max = idle_max
        self._idle = {}
        self._closed = False
        self._lock = threading.Lock()

    def take(self, key):
        """Return (connection, reused)."""
        with self._lock:
            if self._idle.get(key):
                return self._idle[key].pop(), True
        return self._connect(key), False

    def give(self, key, conn):
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if not self._closed and len(idle) < self._idle_max:
                idle.append(conn)
                return
        conn.close()

    def close(self):
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for conn in [c for conns in idle.values() for c in conns]:
            conn.close()


class _Exchange:
    """One response plus the connection it arrived on."""

    def __init__(self, pool, key, conn, resp):
        self._pool = pool
        self._key = key
        self._conn = conn
        self.resp = resp
        self.status = resp.status

    def header(self, name):
        return self.resp.getheader(name)

    def length(self):
        value = self.header("Content-Length")
        return int(value) if value and value.isdigit() else None

    def read(self, limit):
        return self.resp.read(limit)

    def release(self):
        """Finish the body if it is small, then pool the connection."""
        if not self._drainable():
            self.close()
            return
        try:
            self.resp.read()
        except (OSError, http.client.HTTPException):
            self.close()
        self.done()

    def _drainable(self):
        # A 416 from docker-registry announces the blob's length but sends
        # no body, so never wait for it.
        resp = self.resp
        return (self.status != 416 and resp.length is not None
                and not resp.chunked and resp.length <= ERROR_BODY_MAX)

    def done(self):
        """Pool the connection once the body has been fully read."""
        conn, self._conn = self._conn, None
        if conn and self.resp.isclosed() and not self.resp.will_close:
            self._pool.give(self._key, conn)
        elif conn:
            conn.close()

    def close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.resp.close()


# -- blobs --------------------------------------------------------------


class BlobReader(io.RawIOBase):
    """A streamed blob, checked against its digest when fully read.

    Not thread-safe. Raises DigestError at the end of the stream if the
    content does not match or the body was cut short.
    """

    def __init__(self, exchange, digest, ref):
        super().__init__()
        self._ex = exchange
        self._digest = digest
        self._ref = ref
        self._hash = hashlib.new(digest.partition(":")[0])
        self._got = 0
        self._verified = False
        self.size = exchange.length()

    def readable(self):
        return True

    def readinto(self, buffer):
        if self._verified:
            return 0
        n = self._read_some(buffer)
        self._hash.update(memoryview(buffer)[:n])
        self._got += n
        if n == 0 or self._got == self.size:
            self._verify()
        return n

    def readall(self):
        return b"".join(iter(lambda: self.read(_READ_CHUNK), b""))

    def close(self):
        if not self.closed and not self._verified:
            # Draining an unread blob could take minutes; drop the socket.
            self._ex.close()
        super().close()

    def _read_some(self, buffer):
        try:
            return self._ex.resp.readinto(buffer)
        except (OSError, http.client.HTTPException) as e:
            self._ex.close()
            raise RegistryError("blob transfer failed after %d bytes: %s"
                                % (self._got, e), ref=self._ref) from e

    def _verify(self):
        if self.size is not None and self._got < self.size:
            self._ex.close()
            raise DigestError("blob body ended after %d of %d bytes"
                              % (self._got, self.size), ref=self._ref)
        actual = "%s:%s" % (self._hash.name, self._hash.hexdigest())
        if actual != self._digest:
            self._ex.close()
            raise DigestError("blob content has digest %s" % actual,
                              ref=self._ref)
        self._verified = True
        self._ex.done()


# -- client -------------------------------------------------------------


class Client:
    """A thread-safe registry client with pooled keep-alive connections."""

    def __init__(self, keychain=None, insecure=(), ca_file=None,
                 timeout=30.0, retries=5, backoff=0.5,
                 user_agent="hermes/0.1"):
        self.keychain = keychain or Keychain()
        self.insecure = frozenset(str(h).lower() for h in insecure)
        self.ca_file = ca_file
        self.timeout = timeout
        self.retries = max(1, int(retries))
        self.backoff = backoff
        self.user_agent = user_agent
        self._pool = _Pool(self._connect)
        self._lock = threading.Lock()
        self._schemes = {}
        self._challenges = {}
        self._tokens = {}
        self._creds = {}
        self._contexts = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._pool.close()

    # -- public operations

    def get_manifest(self, ref, accept=None):
        """Fetch a manifest by digest if ``ref`` has one, else by tag."""
        path = "/v2/%s/manifests/%s" % (ref.repository,
                                        ref.digest or ref.tag)
        headers = {"Accept": ", ".join(accept or MEDIA_TYPES)}
        ex = self._call(ref, str(ref), "GET", path, headers)
        data = self._read_manifest_body(ex, str(ref))
        media_type = _manifest_type(ex.header("Content-Type"), data,
                                    str(ref))
        digest = self._manifest_digest(ref, data, ex)
        log.debug("fetched manifest %s (%s, %d bytes)", ref, media_type,
                  len(data))
        return Manifest(data, media_type, digest)

    def resolve_image(self, ref, platform=None):
        """Resolve ``ref`` to the manifest for ``platform``."""
        wanted = platform or default_platform()
        top = self.get_manifest(ref)
        if top.media_type not in _INDEX_TYPES:
            image = _make_image(ref.with_digest(top.digest), top, wanted)
            return self._check_platform(image, wanted)
        descriptor, chosen = _pick_manifest(json.loads(top.data), wanted,
                                            str(ref))
        picked = self.get_manifest(ref.with_digest(descriptor.get("digest")))
        if picked.media_type in _INDEX_TYPES:
            raise ManifestError("nested index is not supported",
                                ref=str(ref))
        return _make_image(ref.with_digest(picked.digest), picked, chosen,
                           top.digest)

    def _check_platform(self, image, wanted):
        """A single manifest names its platform only in its config."""
        config = json.loads(self.get_blob(
            image.ref, image.config.get("digest"), MANIFEST_MAX))
        plat = _descriptor_platform({"platform": config})
        if plat is None:
            return image
        if _normalize_platform(*plat) != _normalize_platform(
                *parse_platform(wanted)):
            raise ManifestError(
                "image is for %s, not %s" % (_format_platform(plat), wanted),
                ref=str(image.ref))
        return dataclasses.replace(image, platform=_format_platform(plat))

    def blob_size(self, ref, digest):
        """The blob's size from a HEAD request."""
        ex = self._blob_call(ref, digest, "HEAD")
        size = ex.length()
        ex.release()
        if size is None:
            raise RegistryError("HEAD answer has no Content-Length",
                                ref=_blob_ref(ref, digest))
        return size

    def open_blob(self, ref, digest):
        """Stream a blob; the returned reader checks its digest at EOF."""
        ex = self._blob_call(ref, digest, "GET")
        return BlobReader(ex, digest, _blob_ref(ref, digest))

    def get_blob(self, ref, digest, max_size=BLOB_MAX_DEFAULT):
        """Read a small blob (such as an image config) into memory."""
        with self.open_blob(ref, digest) as reader:
            too_big = (reader.size or 0) > max_size
            data = b"" if too_big else _read_capped(reader, max_size)
        if too_big or len(data) > max_size:
            raise RegistryError("blob is over the %d byte limit" % max_size,
                                ref=_blob_ref(ref, digest))
        return data

    def read_range(self, ref, digest, offset, length):
        """Read exactly ``length`` bytes of a blob from ``offset``."""
        name = _blob_ref(ref, digest)
        if offset < 0 or length < 0:
            raise RangeError("invalid range offset=%d length=%d"
                             % (offset, length), ref=name)
        if length == 0:
            return b""
        last = offset + length - 1
        headers = {"Range": "bytes=%d-%d" % (offset, last)}
        ex = self._blob_call(ref, digest, "GET", headers, ok=(200, 206))
        _check_range_answer(ex, offset, last, name)
        return _read_exact(ex, length, name)

    # -- request pipeline: auth -> retries -> redirects -> pool

    def _blob_call(self, ref, digest, method, headers=None, ok=(200,)):
        _check_digest(digest, _blob_ref(ref, digest))
        path = "/v2/%s/blobs/%s" % (ref.repository, digest)
        headers = dict(headers or {}, **{"Accept-Encoding": "identity"})
        return self._call(ref, _blob_ref(ref, digest), method, path,
                          headers, ok)

    def _call(self, ref, ref_text, method, path, headers, ok=(200,)):
        """Send an authorized request; raise unless the status is ok."""
        ex = self._authorized(ref, ref_text, method, path, headers)
        if ex.status not in ok:
            raise self._error(ex, ref_text)
        return ex

    def _authorized(self, ref, ref_text, method, path, headers):
        sent = self._auth_headers(ref, ref_text)
        ex = self._request(ref, ref_text, method, path, {**headers, **sent})
        if ex.status != 401:
            return ex

        # Learn the challenge; a new or refreshed credential earns one retry.
        challenge = ex.header("WWW-Authenticate")
        error = self._error(ex, ref_text)
        if not challenge:
            raise error
        self._learn_challenge(ref, challenge)
        fresh = self._auth_headers(ref, ref_text)
        if not fresh:
            error.message += "; no credentials for %s in the keychain" % (
                ref.registry)
        if not fresh or fresh == sent:
            raise error
        return self._request(ref, ref_text, method, path,
                             {**headers, **fresh})

    def _request(self, ref, ref_text, method, path, headers):
        def send():
            url = self._base_url(ref.registry) + path
            return self._follow(method, url, headers)
        return self._retrying(ref_text, send)

    def _retrying(self, ref_text, send):
        """Call ``send`` until it gives a non-transient answer."""
        for attempt in range(1, self.retries + 1):
            last = attempt == self.retries
            try:
                ex = send()
            except _TRANSIENT as e:
                if last:
                    raise RegistryError("giving up after %d attempts: %s"
                                        % (attempt, e), ref=ref_text) from e
                self._pause(ref_text, attempt, e, None)
                continue
            except (OSError, http.client.HTTPException) as e:
                raise RegistryError("request failed: %s" % e,
                                    ref=ref_text) from e
            if ex.status not in _RETRY_STATUSES or last:
                return ex
            ex.release()
            self._pause(ref_text, attempt, "HTTP %d" % ex.status,
                        ex.header("Retry-After"))

    def _pause(self, ref_text, attempt, reason, retry_after):
        delay = self._delay(attempt, retry_after)
        log.warning("%s: %s; retrying in %.2fs", ref_text, reason, delay)
        time.sleep(delay)

    def _delay(self, attempt, retry_after):
        wait = _retry_after(retry_after)
        base = self.backoff * (2 ** (attempt - 1))
        # Jitter spreads out clients that failed together.
        backoff = base + random.uniform(0, base / 10)
        return backoff if wait is None else wait

    def _follow(self, method, url, headers):
        """Send, following up to MAX_REDIRECTS redirects."""
        origin, _ = _pool_key_and_target(url)
        for _ in range(MAX_REDIRECTS + 1):
            ex = self._send(method, url, headers)
            location = ex.header("Location")
            if ex.status not in _REDIRECTS or not location:
                return ex
            ex.release()
            url = urllib.parse.urljoin(url, location)
            log.debug("redirected to %s", url.split("?")[0])
            headers = _strip_auth(headers, origin, url)
            if ex.status == 303 and method != "HEAD":
                method = "GET"
        raise RegistryError("more than %d redirects" % MAX_REDIRECTS,
                            ref=url.split("?")[0])

    def _send(self, method, url, headers):
        """One request on a pooled connection; stale ones are replaced."""
        key, target = _pool_key_and_target(url)
        headers = {"User-Agent": self.user_agent, **headers}
        while True:
            conn, reused = self._pool.take(key)
            resp = _exchange(conn, reused, method, target, headers)
            if resp is not None:
                return _Exchange(self._pool, key, conn, resp)
            log.debug("pooled connection to %s:%s went stale",
                      key[1], key[2])

    # -- connections and TLS

    def _connect(self, key):
        scheme, host, port = key
        if scheme == "http":
            return http.client.HTTPConnection(host, port, timeout=self.timeout)
        return http.client.HTTPSConnection(host, port, timeout=self.timeout,
                                           context=self._context(host, port))

    def _context(self, host, port):
        verify = self.ca_file is not None or not self._insecure(host, port)
        with self._lock:
            if verify not in self._contexts:
                self._contexts[verify] = self._make_context(verify)
            return self._contexts[verify]

    def _make_context(self, verify):
        context = ssl.create_default_context()
        context.set_alpn_protocols(["http/1.1"])
        if self.ca_file:
            context.load_verify_locations(self.ca_file)
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _insecure(self, host, port):
        names = (host, "%s:%s" % (host, port), "[%s]:%s" % (host, port))
        return any(name in self.insecure for name in names)

    def _base_url(self, registry):
        if registry not in self._schemes:
            self._schemes[registry] = self._pick_scheme(registry)
        return "%s://%s" % (self._schemes[registry], registry)

    def _pick_scheme(self, registry):
        """https, unless a host allowed plain HTTP does not speak TLS."""
        host, port = _host_port(registry)
        if _is_loopback(host) or self._insecure(host, port):
            return self._probe(registry, ("https", host, port or 443))
        return "https"

    def _probe(self, registry, key):
        conn = self._connect(key)
        try:
            conn.connect()
        except ssl.SSLCertVerificationError as e:
            conn.close()
            raise _tls_error(e, key) from e
        except ssl.SSLError as e:
            # A plain HTTP server answers a TLS hello with garbage.
            conn.close()
            log.info("%s does not speak TLS (%s); using plain http",
                     registry, e.reason or e)
            return "http"
        self._pool.give(key, conn)
        return "https"

    # -- authentication

    def _credentials(self, registry):
        if registry not in self._creds:
            # Look up once per host: a credential helper is a process.
            self._creds[registry] = self.keychain.get(registry)
        return self._creds[registry]

    def _auth_headers(self, ref, ref_text):
        challenge = self._challenges.get(ref.registry)
        if challenge is None:
            return {}
        scheme, params = challenge
        if scheme == "bearer":
            return self._bearer(ref, ref_text, params)
        creds = self._credentials(ref.registry)
        if scheme == "basic" and creds:
            return {"Authorization": _basic(*creds)}
        return {}

    def _learn_challenge(self, ref, header):
        scheme, params = _parse_challenge(header)
        self._challenges[ref.registry] = (scheme, params)
        # A token we sent was refused (it expired): forget it.
        with self._lock:
            self._tokens.pop(_token_key(ref, params), None)

    def _bearer(self, ref, ref_text, params):
        key = _token_key(ref, params)
        with self._lock:
            token, expires = self._tokens.get(key, (None, 0.0))
        if token is None or time.monotonic() >= expires:
            token, ttl = self._fetch_token(ref, ref_text, params)
            with self._lock:
                self._tokens[key] = (token, time.monotonic() + ttl)
        return {"Authorization": "Bearer " + token}

    def _fetch_token(self, ref, ref_text, params):
        """GET a pull token from the challenge's realm."""
        realm, service, scope = _token_key(ref, params)
        if not realm:
            raise AuthError("bearer challenge has no realm", ref=ref_text)
        url = _token_url(realm, service, scope)
        creds = self._credentials(ref.registry)
        headers = {"Authorization": _basic(*creds)} if creds else {}
        ex = self._retrying(ref_text, lambda: self._follow("GET", url,
                                                          headers))
        return _token_answer(ex, realm, ref_text)

    # -- responses

    def _read_manifest_body(self, ex, ref_text):
        size = ex.length()
        if size is not None and size > MANIFEST_MAX:
            ex.close()
            raise ManifestError("manifest is %d bytes, over the %d byte "
                                "limit" % (size, MANIFEST_MAX), ref=ref_text)
        data = _read_body(ex, MANIFEST_MAX + 1, ref_text)
        if len(data) > MANIFEST_MAX:
            raise ManifestError("manifest is over the %d byte limit"
                                % MANIFEST_MAX, ref=ref_text)
        if size is not None and len(data) < size:
            raise ManifestError("manifest body ended after %d of %d bytes"
                                % (len(data), size), ref=ref_text)
        return data

    def _manifest_digest(self, ref, data, ex):
        algorithm = _check_digest(ref.digest) if ref.digest else "sha256"
        actual = _compute_digest(data, algorithm)
        expected = ref.digest or ex.header("Docker-Content-Digest") or ""
        if expected.startswith(algorithm + ":") and expected != actual:
            raise DigestError("manifest content has digest %s, expected %s"
                              % (actual, expected), ref=str(ref))
        return actual

    def _error(self, ex, ref_text):
        """Build the error for a failed answer and release its connection."""
        body = b""
        if ex.status != 416:
            body = _read_body(ex, ERROR_BODY_MAX, ref_text, strict=False)
        ex.release()
        code, message = _first_error_code_and_message(body)
        message = message or ex.resp.reason.lower() or "request failed"
        cls = {401: AuthError, 403: AuthError, 404: NotFoundError,
               416: RangeError}.get(ex.status, RegistryError)
        return cls(message, ref=ref_text, status=ex.status, code=code)


def _strip_auth(headers, origin, url):
    # Credentials for the registry must not leak to storage hosts.
    if _pool_key_and_target(url)[0] == origin:
        return headers
    return {k: v for k, v in headers.items()
            if k.lower() != "authorization"}


def _basic(username, password):
    pair = ("%s:%s" % (username, password)).encode("utf-8")
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _token_key(ref, params):
    scope = "repository:%s:pull" % ref.repository
    return params.get("realm", ""), params.get("service", ""), scope


def _token_url(realm, service, scope):
    query = {"service": service, "scope": scope} if service else {
        "scope": scope}
    separator = "&" if "?" in realm else "?"
    return realm + separator + urllib.parse.urlencode(query, safe=":/")


def _token_answer(ex, realm, ref_text):
    """Return (token, seconds to cache it) from a token endpoint answer."""
    if ex.status != 200:
        ex.release()
        raise AuthError("token request to %s failed" % realm,
                        ref=ref_text, status=ex.status)
    token, ttl = _token_fields(_read_body(ex, TOKEN_BODY_MAX, ref_text),
                               realm, ref_text)
    if not token:
        raise AuthError("token endpoint %s sent no token" % realm,
                        ref=ref_text)
    # Renew a little early so a token never expires in flight.
    return token, max(ttl - min(10.0, ttl / 2), 0.0)


def _token_fields(body, realm, ref_text):
    try:
        answer = json.loads(body)
        token = answer.get("token") or answer.get("access_token")
        return token, float(answer.get("expires_in") or TOKEN_DEFAULT_TTL_S)
    except (ValueError, AttributeError, TypeError) as e:
        raise AuthError("token endpoint %s sent no json" % realm,
                        ref=ref_text) from e


def _read_body(ex, limit, ref_text, strict=True):
    """Read up to ``limit`` bytes, then pool or drop the connection."""
    try:
        data = ex.read(limit)
    except (OSError, http.client.HTTPException) as e:
        ex.close()
        if not strict:
            return b""
        raise RegistryError("reading the answer failed: %s" % e,
                            ref=ref_text) from e
    ex.done()
    return data


def _manifest_type(content_type, data, ref_text):
    """Work out and check a manifest's media type."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type in _SCHEMA1_TYPES:
        raise _schema1_error(ref_text)
    doc = _manifest_json(data, ref_text)
    if doc.get("schemaVersion") == 1:
        raise _schema1_error(ref_text)
    if media_type not in MEDIA_TYPES:
        media_type = doc.get("mediaType") or _guess_type(doc)
    if media_type not in MEDIA_TYPES:
        raise ManifestError("unsupported manifest media type %r"
                            % media_type, ref=ref_text)
    return media_type


def _manifest_json(data, ref_text):
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise ManifestError("manifest is not valid json: %s" % e,
                            ref=ref_text) from e
    if not isinstance(doc, dict):
        raise ManifestError("manifest is not a json object", ref=ref_text)
    return doc


def _guess_type(doc):
    # OCI allows omitting mediaType (umoci does); the shape tells.
    if "manifests" in doc:
        return OCI_INDEX
    return OCI_MANIFEST if "layers" in doc else None


def _schema1_error(ref_text):
    return ManifestError("schema 1 manifests are not supported; re-push "
                         "the image with a current client", ref=ref_text)


def _make_image(ref, manifest, platform, index_digest=None):
    doc = json.loads(manifest.data)
    config = doc.get("config")
    layers = doc.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise ManifestError("image manifest lacks config or layers",
                            ref=str(ref))
    return Image(ref=ref, digest=manifest.digest,
                 media_type=manifest.media_type, data=manifest.data,
                 manifest=doc, config=config, layers=layers,
                 platform=platform, index_digest=index_digest)


def _read_capped(reader, limit):
    """Read to the end, or stop once more than ``limit`` bytes arrived."""
    data = bytearray()
    while len(data) <= limit:
        chunk = reader.read(min(_READ_CHUNK, limit + 1 - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _blob_ref(ref, digest):
    return "%s@%s" % (ref.name, digest)


def _exchange(conn, reused, method, target, headers):
    """The response, or None when a reused connection proved stale."""
    try:
        conn.request(method, target, headers=headers)
        return conn.getresponse()
    except _STALE:
        conn.close()
        if reused:
            return None
        raise
    except ssl.SSLCertVerificationError as e:
        conn.close()
        raise _tls_error(e, (None, conn.host, conn.port)) from e
    except BaseException:
        conn.close()
        raise


def _tls_error(error, key):
    """Turn a certificate failure into an error a user can act on."""
    return RegistryError(
        "tls certificate not trusted (%s); pass ca_file or list the host "
        "as insecure" % error.verify_message,
        ref="https://%s:%s" % (key[1], key[2]))


def _check_range_answer(ex, first, last, name):
    if ex.status == 200:
        # The whole blob may follow; drop the connection instead.
        ex.close()
        raise RangeError("registry ignored the Range header", ref=name,
                         status=200)
    found = ex.header("Content-Range") or ""
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", found.strip())
    if not match or (int(match[1]), int(match[2])) != (first, last):
        ex.close()
        raise RangeError("asked for bytes %d-%d, got Content-Range %r"
                         % (first, last, found), ref=name, status=206)


def _read_exact(ex, length, name):
    try:
        data = ex.read(length)
    except (OSError, http.client.HTTPException) as e:
        ex.close()
        raise RangeError("range read failed: %s" % e, ref=name) from e
    if len(data) != length:
        ex.close()
        raise RangeError("range body has %d of %d bytes"
                         % (len(data), length), ref=name, status=206)
    ex.release()
    return data
