"""Build test container images and push them to the test registries.

Test support for test_registry.py, test_soci.py and test_hermes.py: makes
deterministic tar layers (tarfile or GNU tar), compresses them (gzip with
chosen header fields, or pigz), and pushes blobs, manifests and whole
images (OCI or Docker schema 2, optionally under an index) to the
docker-registry instances that scripts/env-up.sh starts.
Stdlib-only.  Limits: Basic auth only (Debian has no Bearer token server);
blobs go up in one monolithic PUT; no zstd.
"""

import base64
import dataclasses
import gzip
import hashlib
import http.client
import io
import json
import os
import random
import ssl
import struct
import subprocess
import tarfile
import types
import urllib.parse
import zlib

__all__ = [
    "Entry", "PushError", "big_layer_files", "gnu_tar_layer", "gzip_layer",
    "pigz_layer", "push_blob", "push_image", "push_manifest",
    "random_bytes", "registry_env", "sha256_digest", "tar_layer",
]

MiB = 1024 * 1024

# Generous: a 25 MiB blob PUT on a busy 2-core CI machine.
HTTP_TIMEOUT_S = 60

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

_TAR_FORMATS = {
    "pax": tarfile.PAX_FORMAT,
    "gnu": tarfile.GNU_FORMAT,
    "ustar": tarfile.USTAR_FORMAT,
}

_TAR_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
}

# The variables scripts/env-up.sh writes to $BASE/env, by attribute name.
_ENV_VARS = {
    "plain": "HERMES_TEST_REGISTRY",
    "auth": "HERMES_TEST_REGISTRY_AUTH",
    "tls": "HERMES_TEST_REGISTRY_TLS",
    "ca": "HERMES_TEST_CA",
    "user": "HERMES_TEST_USER",
    "password": "HERMES_TEST_PASSWORD",
}


class PushError(Exception):
    """A registry answered a push request with an unexpected status."""


def registry_env():
    """Return the test registries' addresses and credentials."""
    values = {key: os.environ.get(var) for key, var in _ENV_VARS.items()}
    if not all(values.values()):
        raise RuntimeError(
            "registry test environment not set: run ./test.sh")
    return types.SimpleNamespace(**values)


def sha256_digest(data):
    """Return the OCI digest string of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


# Layers --------------------------------------------------------------


@dataclasses.dataclass
class Entry:
    """One member of a tar layer; `type` is a key of _TAR_TYPES."""

    name: str
    data: bytes = b""
    type: str = "file"
    linkname: str = ""
    mode: int = 0o644
    mtime: float = 1700000000
    pax: dict | None = None
    devmajor: int = 0
    devminor: int = 0


def _tarinfo(entry):
    info = tarfile.TarInfo(entry.name)
    info.type = _TAR_TYPES[entry.type]
    info.mode = entry.mode
    info.mtime = entry.mtime
    info.linkname = entry.linkname
    info.devmajor = entry.devmajor
    info.devminor = entry.devminor
    if entry.type == "file":
        info.size = len(entry.data)
    if entry.pax:
        info.pax_headers = dict(entry.pax)
    # uid, gid and owner names keep tarfile's defaults: 0 and "".
    return info


def tar_layer(entries, fmt="pax"):
    """Return an uncompressed tar of `entries`, byte-identical per input."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w",
                      format=_TAR_FORMATS[fmt]) as tar:
        for entry in entries:
            data = io.BytesIO(entry.data) if entry.type == "file" else None
            tar.addfile(_tarinfo(entry), data)
    return buf.getvalue()


def gnu_tar_layer(root_dir, fmt="pax"):
    """Return GNU tar's archive of `root_dir` (members start with ./)."""
    cmd = ["tar", "--format=" + fmt, "--sort=name", "--numeric-owner",
           "-C", os.fspath(root_dir), "-cf", "-", "."]
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE).stdout


def _gzip_header(level, filename, comment, extra):
    # RFC 1952 section 2.3: ID1 ID2 CM FLG MTIME(4) XFL OS, then the
    # optional fields in the order FEXTRA, FNAME, FCOMMENT.
    flags = 0
    optional = b""
    if extra is not None:
        flags |= 0x04
        optional += struct.pack("<H", len(extra)) + extra
    if filename is not None:
        flags |= 0x08
        optional += _latin1(filename) + b"\0"
    if comment is not None:
        flags |= 0x10
        optional += _latin1(comment) + b"\0"
    xfl = {1: 4, 9: 2}.get(level, 0)
    # mtime 0 keeps the output stable; OS 3 (Unix) is what gzip writes.
    return struct.pack("<BBBBIBB", 0x1F, 0x8B, 8, flags, 0, xfl, 3) + \
        optional


def _latin1(value):
    return value if isinstance(value, bytes) else value.encode("latin-1")


def gzip_layer(tar_bytes, level=6, filename=None, comment=None,
               extra=None):
    """Gzip `tar_bytes` as one member with mtime 0.

    `filename` and `comment` (str or bytes) and `extra` (the raw bytes of
    the FEXTRA field) set the matching optional header fields.
    """
    deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflate.compress(tar_bytes) + deflate.flush()
    trailer = struct.pack("<II", zlib.crc32(tar_bytes),
                          len(tar_bytes) & 0xFFFFFFFF)
    return _gzip_header(level, filename, comment, extra) + body + trailer


def pigz_layer(tar_bytes, block_kib=128):
    """Compress with pigz, which deflates `block_kib` blocks in parallel."""
    # -n: no name and no mtime in the header, so the output is stable.
    cmd = ["pigz", "-n", "-b", str(block_kib), "-c"]
    return subprocess.run(cmd, input=tar_bytes, check=True,
                          stdout=subprocess.PIPE).stdout


def random_bytes(n, seed):
    """Return `n` pseudo-random bytes, the same for the same seed."""
    return random.Random(seed).randbytes(n)


def big_layer_files(total_mib=12, seed=1):
    """Return entries for a layer that gzips to about `total_mib` MiB.

    There are `total_mib` files under data/, each 1 MiB of random bytes
    followed by 1 MiB of zeros: random data does not compress and zeros
    almost vanish, so the default gzips to just over 12 MiB (more than
    SOCI's 10 MiB minimum layer size) from 24 MiB of tar.
    """
    noise = random_bytes(total_mib * MiB, seed)
    zeros = bytes(MiB)
    entries = [Entry("data", type="dir", mode=0o755)]
    for i in range(total_mib):
        chunk = noise[i * MiB:(i + 1) * MiB]
        entries.append(Entry("data/f%04d.bin" % i, chunk + zeros))
    return entries


# Registry HTTP -------------------------------------------------------


def _request(host, method, path, *, body=None, headers=None, auth=None,
             tls=False, ca=None):
    """Send one request; return (status, headers, body)."""
    if tls:
        context = ssl.create_default_context(cafile=ca)
        conn = http.client.HTTPSConnection(host, timeout=HTTP_TIMEOUT_S,
                                           context=context)
    else:
        conn = http.client.HTTPConnection(host, timeout=HTTP_TIMEOUT_S)
    headers = dict(headers or {})
    if auth is not None:
        token = base64.b64encode(("%s:%s" % auth).encode()).decode()
        headers["Authorization"] = "Basic " + token
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def _expect(status, wanted, method, path, body):
    if status != wanted:
        raise PushError("%s %s: status %d, wanted %d: %r"
                        % (method, path, status, wanted, body[:256]))


def _upload_path(location, query):
    # Location is absolute in distribution 2.8 but may be relative per
    # the spec; only its path and query matter, the host stays ours.
    url = urllib.parse.urlsplit(urllib.parse.urljoin("/", location))
    sep = "&" if url.query else ""
    return "%s?%s%s%s" % (url.path, url.query, sep, query)


def push_blob(host, repo, data, *, auth=None, tls=False, ca=None):
    """Upload `data` unless present; return its digest."""
    access = {"auth": auth, "tls": tls, "ca": ca}
    digest = sha256_digest(data)
    path = "/v2/%s/blobs/%s" % (repo, digest)
    status, _, _ = _request(host, "HEAD", path, **access)
    if status == 200:
        return digest

    # Distribution spec "monolithic upload": POST opens a session,
    # one PUT with ?digest= sends everything and closes it.
    path = "/v2/%s/blobs/uploads/" % repo
    status, headers, body = _request(host, "POST", path, **access)
    _expect(status, 202, "POST", path, body)
    query = urllib.parse.urlencode({"digest": digest})
    path = _upload_path(headers["Location"], query)
    status, _, body = _request(
        host, "PUT", path, body=data,
        headers={"Content-Type": "application/octet-stream"}, **access)
    _expect(status, 201, "PUT", path, body)
    return digest


def push_manifest(host, repo, reference, data, media_type, *, auth=None,
                  tls=False, ca=None):
    """Store manifest bytes `data` under `reference`; return its digest."""
    path = "/v2/%s/manifests/%s" % (repo, reference)
    status, headers, body = _request(
        host, "PUT", path, body=data, headers={"Content-Type": media_type},
        auth=auth, tls=tls, ca=ca)
    _expect(status, 201, "PUT", path, body)
    digest = sha256_digest(data)
    if headers.get("Docker-Content-Digest", digest) != digest:
        raise PushError("PUT %s: registry digest %s, ours %s"
                        % (path, headers["Docker-Content-Digest"], digest))
    return digest


# Images --------------------------------------------------------------


def _json(obj):
    # Compact and sorted, so the same image always has the same digest.
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _is_gzip(blob):
    return blob[:2] == b"\x1f\x8b"


def _diff_id(blob):
    # diff_ids name the uncompressed tar, whatever the blob's compression.
    return sha256_digest(gzip.decompress(blob) if _is_gzip(blob) else blob)


def _layer_media_type(blob, docker):
    if docker:
        return DOCKER_LAYER_GZIP
    return OCI_LAYER_GZIP if _is_gzip(blob) else OCI_LAYER


def _platform(spec):
    parts = spec.split("/")
    platform = {"os": parts[0], "architecture": parts[1]}
    if len(parts) > 2:
        platform["variant"] = parts[2]
    return platform


def _descriptor(media_type, digest, size, platform=None):
    desc = {"mediaType": media_type, "digest": digest, "size": size}
    if platform is not None:
        desc["platform"] = platform
    return desc


def _config(platform, diff_ids):
    config = dict(platform)
    config["config"] = {"Cmd": ["/bin/sh"]}
    config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    return _json(config)


def _push_platform_manifest(host, repo, reference, platform, diff_ids,
                            layer_descs, docker, access):
    """Push a config for `platform` and its manifest; return both."""
    config = _config(platform, diff_ids)
    config_type = DOCKER_CONFIG if docker else OCI_CONFIG
    config_digest = push_blob(host, repo, config, **access)
    manifest_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    manifest = _json({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": _descriptor(config_type, config_digest, len(config)),
        "layers": layer_descs,
    })
    digest = push_manifest(host, repo, reference or sha256_digest(manifest),
                           manifest, manifest_type, **access)
    desc = _descriptor(manifest_type, digest, len(manifest), platform)
    return desc, config_digest


def _other_platform(platform):
    # The decoy manifest in an index: arm64, unless arm64 was asked for.
    other = "linux/amd64" if platform["architecture"] == "arm64" \
        else "linux/arm64"
    return _platform(other)


def push_image(host, repo, tag, layers, *, auth=None, tls=False, ca=None,
               index=False, docker=False, layer_media_types=None,
               platform="linux/amd64"):
    """Push an image made of the raw layer blobs `layers`.

    OCI by default, Docker schema 2 with `docker`.  With `index`, the tag
    names an OCI index (a Docker manifest list with `docker`) holding the
    image for `platform` and a second manifest for another architecture
    with the same layers.  `layer_media_types` overrides, per layer, the
    media type guessed from the blob.  Returns the digests pushed.
    """
    access = {"auth": auth, "tls": tls, "ca": ca}
    media_types = layer_media_types or [
        _layer_media_type(blob, docker) for blob in layers]
    layer_descs = [
        _descriptor(mt, push_blob(host, repo, blob, **access), len(blob))
        for blob, mt in zip(layers, media_types, strict=True)]
    diff_ids = [_diff_id(blob) for blob in layers]
    wanted = _platform(platform)

    desc, config_digest = _push_platform_manifest(
        host, repo, None if index else tag, wanted, diff_ids, layer_descs,
        docker, access)
    index_digest = None
    if index:
        decoy, _ = _push_platform_manifest(
            host, repo, None, _other_platform(wanted), diff_ids,
            layer_descs, docker, access)
        index_type = DOCKER_LIST if docker else OCI_INDEX
        body = _json({"schemaVersion": 2, "mediaType": index_type,
                      "manifests": [desc, decoy]})
        index_digest = push_manifest(host, repo, tag, body, index_type,
                                     **access)
    return {
        "manifest_digest": desc["digest"],
        "index_digest": index_digest,
        "config_digest": config_digest,
        "layers": [(d["digest"], d["size"], d["mediaType"])
                   for d in layer_descs],
    }
