"""Tests for registry.py: fake in-process registries, then the real ones.

The fake servers run on 127.0.0.1 port 0 in threads. The real-registry
tests need the environment that ./test.sh exports (HERMES_TEST_REGISTRY and
friends) and fail, rather than skip, when it is missing.
"""
# Copyright 2026 The Hermes authors. SPDX-License-Identifier: Apache-2.0

import base64
import gzip
import hashlib
import http.server
import json
import os
import socket
import sys
import threading
import time
import types
import urllib.parse

import pytest

import registry as reg
import testimages

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def b64(text):
    return base64.b64encode(text.encode()).decode()


# -- fake registry servers ----------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The server side gives up on idle sockets, so a stuck test ends.
    timeout = 10

    def do_GET(self):
        self.server.dispatch(self)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


class FakeServer(http.server.ThreadingHTTPServer):
    """A server whose requests go to ``app(server, handler)``."""

    daemon_threads = True

    def __init__(self, app):
        super().__init__(("127.0.0.1", 0), Handler)
        self.app = app
        self.requests = []
        self.peers = set()
        self.lock = threading.Lock()

    @property
    def host(self):
        return "127.0.0.1:%d" % self.server_address[1]

    def dispatch(self, handler):
        with self.lock:
            self.requests.append(snapshot(handler))
            self.peers.add(handler.client_address)
        self.app(self, handler)

    def handle_error(self, request, client_address):
        # Clients that hang up mid-answer are part of several tests.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def count(self, path_part):
        return sum(1 for h in self.requests if path_part in h.path)


def snapshot(handler):
    # A handler serves every request of its connection; copy this one's.
    return types.SimpleNamespace(command=handler.command, path=handler.path,
                                 headers=handler.headers)


def reply(handler, status, body=b"", headers=None, length=None):
    handler.send_response(status)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    size = len(body) if length is None else length
    handler.send_header("Content-Length", str(size))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


def oci_error(handler, status, code, message, headers=None):
    body = json.dumps({"errors": [{"code": code, "message": message}]})
    reply(handler, status, body.encode(), headers)


class Store:
    """Canned manifests and blobs served the way distribution does."""

    def __init__(self):
        self.manifests = {}
        self.blobs = {}

    def add_blob(self, data):
        self.blobs[sha256(data)] = data
        return sha256(data)

    def add_manifest(self, repo, doc, tag=None, media_type=None):
        data = json.dumps(doc).encode() if isinstance(doc, dict) else doc
        media_type = media_type or doc.get("mediaType")
        digest = sha256(data)
        for key in (digest, tag):
            if key:
                self.manifests[(repo, key)] = (media_type, data)
        return digest

    def add_image(self, repo, tag=None, layers=(b"layer",)):
        config = self.add_blob(b'{"architecture":"amd64"}')
        doc = {
            "schemaVersion": 2, "mediaType": reg.OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config,
                       "size": 24},
            "layers": [{"mediaType": OCI_LAYER, "digest": self.add_blob(d),
                        "size": len(d)} for d in layers],
        }
        return self.add_manifest(repo, doc, tag)

    def __call__(self, server, handler):
        parts = urllib.parse.urlsplit(handler.path).path.split("/")
        if parts[-2] == "manifests":
            self.manifest(handler, "/".join(parts[2:-2]), parts[-1])
        elif parts[-2] == "blobs":
            self.blob(handler, parts[-1])
        else:
            reply(handler, 200, b"{}")

    def manifest(self, handler, repo, key):
        found = self.manifests.get((repo, key))
        if found is None:
            oci_error(handler, 404, "MANIFEST_UNKNOWN", "manifest unknown")
            return
        media_type, data = found
        reply(handler, 200, data, {"Content-Type": media_type,
                                   "Docker-Content-Digest": sha256(data)})

    def blob(self, handler, digest):
        data = self.blobs.get(digest)
        if data is None:
            oci_error(handler, 404, "BLOB_UNKNOWN", "blob unknown")
            return
        wanted = handler.headers.get("Range")
        if not wanted:
            reply(handler, 200, data)
            return
        first, last = map(int, wanted.split("=")[1].split("-"))
        reply(handler, 206, data[first:last + 1], {
            "Content-Range": "bytes %d-%d/%d" % (first, last, len(data))})


@pytest.fixture
def serve():
    """Start fake servers on demand; stop them all at the end."""
    servers = []

    def start(app):
        server = FakeServer(app)
        thread = threading.Thread(target=server.serve_forever,
                                  kwargs={"poll_interval": 0.05})
        thread.start()
        servers.append((server, thread))
        return server

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def client():
    clients = []

    def make(**kwargs):
        kwargs.setdefault("backoff", 0.01)
        kwargs.setdefault("timeout", 5)
        made = reg.Client(**kwargs)
        clients.append(made)
        return made

    yield make
    for made in clients:
        made.close()


def ref_to(server, repo="test/app", tag="v1"):
    return reg.parse_reference("%s/%s:%s" % (server.host, repo, tag))


# -- module shape -------------------------------------------------------


def test_public_names_exist():
    for name in reg.__all__:
        assert hasattr(reg, name), name


def test_source_lines_stay_within_79_columns():
    with open(reg.__file__, encoding="utf-8") as f:
        long_lines = [n for n, line in enumerate(f, 1)
                      if len(line.rstrip("\n")) > 79]
    assert long_lines == []


# -- references ---------------------------------------------------------

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, registry, repository, tag, digest", [
    ("nginx", "registry-1.docker.io", "library/nginx", "latest", None),
    ("nginx:1.25", "registry-1.docker.io", "library/nginx", "1.25", None),
    ("docker.io/nginx", "registry-1.docker.io", "library/nginx",
     "latest", None),
    ("index.docker.io/x", "registry-1.docker.io", "library/x",
     "latest", None),
    ("docker.io/bitnami/redis:7", "registry-1.docker.io", "bitnami/redis",
     "7", None),
    ("user/app", "registry-1.docker.io", "user/app", "latest", None),
    ("localhost/app", "localhost", "app", "latest", None),
    ("localhost:5000/a/b/c:t", "localhost:5000", "a/b/c", "t", None),
    ("127.0.0.1:5000/test/app:v1", "127.0.0.1:5000", "test/app", "v1",
     None),
    ("ghcr.io/org/team/tool", "ghcr.io", "org/team/tool", "latest", None),
    ("quay.io/a/b@" + DIGEST, "quay.io", "a/b", None, DIGEST),
    ("quay.io/a/b:t@" + DIGEST, "quay.io", "a/b", "t", DIGEST),
    ("nginx@" + DIGEST, "registry-1.docker.io", "library/nginx", None,
     DIGEST),
    ("[::1]:5000/app", "[::1]:5000", "app", "latest", None),
    ("my-reg.example.com/a_b/c.d-e:1.0_rc", "my-reg.example.com",
     "a_b/c.d-e", "1.0_rc", None),
])
def test_parse_reference(text, registry, repository, tag, digest):
    ref = reg.parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry, repository, tag, digest)


@pytest.mark.parametrize("text", [
    "", " nginx", "Nginx", "docker.io/Library/nginx", "nginx:",
    "nginx@", "nginx@sha256:abc", "nginx@sha256:" + "AB" * 32,
    "nginx@md5:" + "ab" * 16, "/nginx", "a//b", "host:5000/",
    "nginx:bad/tag", "nginx:" + "t" * 129, "-bad", "a/b_-c", None,
])
def test_parse_reference_rejects(text):
    with pytest.raises(reg.RegistryError) as info:
        reg.parse_reference(text)
    assert info.value.ref == text
    assert "\n" not in str(info.value)


def test_reference_canonical_forms():
    assert str(reg.parse_reference("nginx")) == \
        "registry-1.docker.io/library/nginx:latest"
    ref = reg.parse_reference("host:1/repo:tag@" + DIGEST)
    assert str(ref) == "host:1/repo:tag@" + DIGEST
    assert ref.name == "host:1/repo"
    assert reg.parse_reference(str(ref)) == ref


def test_with_digest_keeps_the_tag_and_checks_syntax():
    ref = reg.parse_reference("host:1/repo:tag").with_digest(DIGEST)
    assert (ref.tag, ref.digest) == ("tag", DIGEST)
    with pytest.raises(reg.DigestError):
        ref.with_digest("sha256:short")


# -- platforms ----------------------------------------------------------


def test_parse_platform():
    assert reg.parse_platform("linux/amd64") == ("linux", "amd64", None)
    assert reg.parse_platform("linux/arm64/v8") == ("linux", "arm64", "v8")
    for bad in ("linux", "linux/", "a/b/c/d"):
        with pytest.raises(reg.RegistryError):
            reg.parse_platform(bad)


@pytest.mark.parametrize("machine, expected", [
    ("x86_64", "linux/amd64"), ("aarch64", "linux/arm64"),
    ("armv7l", "linux/arm/v7"),
])
def test_default_platform(monkeypatch, machine, expected):
    monkeypatch.setattr(reg._platform, "machine", lambda: machine)
    monkeypatch.setattr(reg._platform, "system", lambda: "Linux")
    assert reg.default_platform() == expected


def index_store(repo="test/app"):
    store = Store()
    entries = []
    for plat in ({"os": "linux", "architecture": "amd64"},
                 {"os": "linux", "architecture": "arm64", "variant": "v8"},
                 {"os": "linux", "architecture": "arm", "variant": "v7"},
                 {"os": "unknown", "architecture": "unknown"}):
        layer = ("layer for %s" % plat).encode()
        digest = store.add_image(repo, layers=(layer,))
        size = len(store.manifests[(repo, digest)][1])
        entries.append({"mediaType": reg.OCI_MANIFEST, "digest": digest,
                        "size": size, "platform": plat})
    index = {"schemaVersion": 2, "mediaType": reg.OCI_INDEX,
             "manifests": entries}
    store.add_manifest(repo, index, tag="v1")
    return store, entries


@pytest.mark.parametrize("wanted, picked", [
    ("linux/amd64", 0), ("linux/arm64", 1), ("linux/arm64/v8", 1),
    ("linux/aarch64", 1), ("linux/arm", 2), ("linux/arm/v7", 2),
])
def test_resolve_image_picks_the_platform(serve, client, wanted, picked):
    store, entries = index_store()
    server = serve(store)
    image = client().resolve_image(ref_to(server), platform=wanted)
    assert image.digest == entries[picked]["digest"]
    assert image.ref.digest == image.digest and image.ref.tag == "v1"
    assert image.index_digest == sha256(store.manifests[
        ("test/app", "v1")][1])
    assert image.media_type == reg.OCI_MANIFEST
    assert image.layers[0]["mediaType"] == OCI_LAYER
    assert image.config["mediaType"] == OCI_CONFIG


def test_resolve_image_without_a_matching_platform(serve, client):
    store, _ = index_store()
    server = serve(store)
    with pytest.raises(reg.ManifestError) as info:
        client().resolve_image(ref_to(server), platform="linux/s390x")
    assert "no manifest for linux/s390x" in str(info.value)
    assert "linux/arm64/v8" in str(info.value)


def test_resolve_image_of_a_single_manifest(serve, client):
    store = Store()
    digest = store.add_image("test/app", tag="v1")
    server = serve(store)
    image = client().resolve_image(ref_to(server), platform="linux/amd64")
    assert (image.digest, image.index_digest) == (digest, None)
    assert image.platform == "linux/amd64"
    assert json.loads(image.data) == image.manifest


def test_platform_manifest_is_verified_against_the_index(serve, client):
    store, entries = index_store()
    key = ("test/app", entries[0]["digest"])
    store.manifests[key] = (reg.OCI_MANIFEST, b'{"schemaVersion": 2}')
    server = serve(store)
    with pytest.raises(reg.DigestError):
        client().resolve_image(ref_to(server), platform="linux/amd64")


# -- manifests ----------------------------------------------------------


def test_get_manifest_by_tag_sends_accept_and_computes_digest(serve,
                                                              client):
    store = Store()
    digest = store.add_image("test/app", tag="v1")
    server = serve(store)
    manifest = client().get_manifest(ref_to(server))
    assert manifest.digest == digest
    assert manifest.media_type == reg.OCI_MANIFEST
    accept = server.requests[-1].headers["Accept"]
    assert all(t in accept for t in reg.MEDIA_TYPES)


def test_docker_schema2_manifest_and_list(serve, client):
    store = Store()
    doc = {"schemaVersion": 2, "mediaType": reg.DOCKER_MANIFEST,
           "config": {"digest": store.add_blob(b"{}")}, "layers": []}
    digest = store.add_manifest("test/app", doc)
    store.add_manifest("test/app", {
        "schemaVersion": 2, "mediaType": reg.DOCKER_LIST,
        "manifests": [{"digest": digest, "platform": {
            "os": "linux", "architecture": "amd64"}}]}, tag="v1")
    server = serve(store)
    image = client().resolve_image(ref_to(server), "linux/amd64")
    assert image.media_type == reg.DOCKER_MANIFEST
    assert image.digest == digest


def test_media_type_comes_from_the_body_when_the_header_is_generic(
        serve, client):
    store = Store()
    doc = {"schemaVersion": 2, "config": {"digest": DIGEST}, "layers": []}
    store.add_manifest("test/app", doc, "v1", "application/json")
    server = serve(store)
    assert client().get_manifest(ref_to(server)).media_type == \
        reg.OCI_MANIFEST


@pytest.mark.parametrize("media_type, doc", [
    ("application/vnd.docker.distribution.manifest.v1+prettyjws",
     {"schemaVersion": 1, "name": "test/app"}),
    ("application/vnd.docker.distribution.manifest.v1+json",
     {"schemaVersion": 1}),
    ("application/json", {"schemaVersion": 1, "fsLayers": []}),
])
def test_schema1_manifests_are_refused(serve, client, media_type, doc):
    store = Store()
    store.add_manifest("test/app", doc, "v1", media_type)
    server = serve(store)
    with pytest.raises(reg.ManifestError) as info:
        client().get_manifest(ref_to(server))
    assert "schema 1 manifests are not supported; re-push" in \
        str(info.value)


@pytest.mark.parametrize("body, media_type, words", [
    (b"not json", reg.OCI_MANIFEST, "not valid json"),
    (b"[1]", reg.OCI_MANIFEST, "not a json object"),
    (b'{"schemaVersion": 2}', "text/html", "unsupported manifest media"),
])
def test_bad_manifests_are_refused(serve, client, body, media_type,
                                   words):
    store = Store()
    store.add_manifest("test/app", body, "v1", media_type)
    server = serve(store)
    with pytest.raises(reg.ManifestError) as info:
        client().get_manifest(ref_to(server))
    assert words in str(info.value)


def test_manifest_digest_mismatch_by_digest(serve, client):
    store = Store()
    real = store.add_image("test/app")
    store.manifests[("test/app", DIGEST)] = store.manifests[
        ("test/app", real)]
    server = serve(store)
    with pytest.raises(reg.DigestError) as info:
        client().get_manifest(ref_to(server).with_digest(DIGEST))
    assert real in str(info.value)


def test_manifest_digest_header_mismatch_by_tag(serve, client):
    def app(server, handler):
        reply(handler, 200, b'{"schemaVersion":2,"layers":[]}', {
            "Content-Type": reg.OCI_MANIFEST,
            "Docker-Content-Digest": DIGEST})
    server = serve(app)
    with pytest.raises(reg.DigestError):
        client().get_manifest(ref_to(server))


def test_digest_wins_over_tag_for_fetching(serve, client):
    store = Store()
    digest = store.add_image("test/app")
    server = serve(store)
    ref = reg.parse_reference("%s/test/app:gone@%s" % (server.host, digest))
    assert client().get_manifest(ref).digest == digest
    assert server.requests[-1].path.endswith(digest)


def test_oversized_manifest_is_refused_before_reading(serve, client):
    def app(server, handler):
        reply(handler, 200, b"{}", {"Content-Type": reg.OCI_MANIFEST},
              length=reg.MANIFEST_MAX + 1)
        handler.close_connection = True
    server = serve(app)
    started = time.monotonic()
    with pytest.raises(reg.ManifestError) as info:
        client().get_manifest(ref_to(server))
    assert "over the" in str(info.value)
    assert time.monotonic() - started < 2


def test_error_json_code_is_in_the_message(serve, client):
    server = serve(Store())
    with pytest.raises(reg.NotFoundError) as info:
        client().get_manifest(ref_to(server))
    error = info.value
    assert str(error) == ("%s/test/app:v1: manifest unknown "
                          "(HTTP 404, MANIFEST_UNKNOWN)" % server.host)
    assert (error.status, error.code) == (404, "MANIFEST_UNKNOWN")
    assert error.ref == "%s/test/app:v1" % server.host


def test_error_without_json_uses_the_reason(serve, client):
    def app(server, handler):
        reply(handler, 400, b"<html>\nbad\n</html>")
    server = serve(app)
    with pytest.raises(reg.RegistryError) as info:
        client().get_manifest(ref_to(server))
    assert str(info.value).endswith("bad request (HTTP 400)")
    assert info.value.code is None


def test_registry_error_string_is_one_line():
    error = reg.RegistryError("two\nlines", ref="r", status=500, code="X")
    assert str(error) == "r: two lines (HTTP 500, X)"
    assert str(reg.RegistryError("plain")) == "plain"


# -- blobs --------------------------------------------------------------


def blob_server(serve, data=b"0123456789" * 1000):
    store = Store()
    digest = store.add_blob(data)
    return serve(store), store, digest, data


def test_blob_stream_size_and_small_get(serve, client):
    server, _, digest, data = blob_server(serve)
    registry_client = client()
    ref = ref_to(server)
    assert registry_client.blob_size(ref, digest) == len(data)
    with registry_client.open_blob(ref, digest) as reader:
        assert reader.size == len(data)
        assert reader.read(10) == data[:10]
        assert reader.read() == data[10:]
    assert registry_client.get_blob(ref, digest) == data
    assert server.requests[-1].headers["Accept-Encoding"] == "identity"


def test_blob_reader_readinto_and_file_like_use(serve, client):
    server, _, digest, data = blob_server(serve)
    reader = client().open_blob(ref_to(server), digest)
    buffer = bytearray(4096)
    received = bytearray()
    while True:
        n = reader.readinto(buffer)
        if not n:
            break
        received += buffer[:n]
    reader.close()
    assert bytes(received) == data and reader.closed


def test_get_blob_refuses_blobs_over_max_size(serve, client):
    server, _, digest, _ = blob_server(serve)
    with pytest.raises(reg.RegistryError) as info:
        client().get_blob(ref_to(server), digest, max_size=100)
    assert "over the 100 byte limit" in str(info.value)


def test_blob_digest_mismatch(serve, client):
    server, store, digest, data = blob_server(serve)
    store.blobs[digest] = data[:-1] + b"X"
    with pytest.raises(reg.DigestError) as info:
        client().get_blob(ref_to(server), digest)
    assert "blob content has digest" in str(info.value)


def test_truncated_blob_is_an_error_not_short_data(serve, client):
    data = b"x" * 5000

    def app(server, handler):
        reply(handler, 200, data[:1000], length=len(data))
        handler.close_connection = True
    server = serve(app)
    with pytest.raises(reg.DigestError) as info:
        client().get_blob(ref_to(server), sha256(data))
    assert "ended after 1000 of 5000 bytes" in str(info.value)


def test_missing_blob_is_not_found(serve, client):
    server, _, _, _ = blob_server(serve)
    with pytest.raises(reg.NotFoundError) as info:
        client().get_blob(ref_to(server), DIGEST)
    assert info.value.code == "BLOB_UNKNOWN"
    with pytest.raises(reg.NotFoundError):
        client().blob_size(ref_to(server), DIGEST)


def test_bad_blob_digest_is_refused_before_any_request(serve, client):
    server, _, _, _ = blob_server(serve)
    with pytest.raises(reg.DigestError):
        client().get_blob(ref_to(server), "sha256:nothex")
    assert server.requests == []


def test_read_range(serve, client):
    server, _, digest, data = blob_server(serve)
    registry_client = client()
    ref = ref_to(server)
    assert registry_client.read_range(ref, digest, 5, 20) == data[5:25]
    assert registry_client.read_range(ref, digest, len(data) - 1, 1) == \
        data[-1:]
    assert registry_client.read_range(ref, digest, 0, 0) == b""
    assert server.requests[-1].headers["Range"] == "bytes=%d-%d" % (
        len(data) - 1, len(data) - 1)


def test_range_answered_with_200_is_refused(serve, client):
    def app(server, handler):
        reply(handler, 200, b"z" * 100000)
    server = serve(app)
    with pytest.raises(reg.RangeError) as info:
        client().read_range(ref_to(server), DIGEST, 10, 10)
    assert "registry ignored the Range header" in str(info.value)


@pytest.mark.parametrize("content_range", [
    "bytes 0-9/100", "bytes 10-20/100", "", "items 10-19/100"])
def test_wrong_content_range_is_refused(serve, client, content_range):
    def app(server, handler):
        reply(handler, 206, b"y" * 10, {"Content-Range": content_range})
    server = serve(app)
    with pytest.raises(reg.RangeError) as info:
        client().read_range(ref_to(server), DIGEST, 10, 10)
    assert "Content-Range" in str(info.value)


def test_short_range_body_is_refused(serve, client):
    def app(server, handler):
        reply(handler, 206, b"y" * 5, {"Content-Range": "bytes 10-19/100"},
              length=10)
        handler.close_connection = True
    server = serve(app)
    with pytest.raises(reg.RangeError) as info:
        client().read_range(ref_to(server), DIGEST, 10, 10)
    assert "5 of 10 bytes" in str(info.value)


def test_416_does_not_wait_for_the_announced_body(serve, client):
    def app(server, handler):
        # docker-registry announces the blob size but sends nothing.
        reply(handler, 416, b"", length=100000)
    server = serve(app)
    started = time.monotonic()
    with pytest.raises(reg.RangeError) as info:
        client(timeout=10).read_range(ref_to(server), DIGEST, 10**6, 10)
    assert info.value.status == 416
    assert time.monotonic() - started < 3


# -- retries ------------------------------------------------------------


def flaky(store, failures):
    """An app that answers with ``failures`` first, then as ``store``."""
    pending = list(failures)

    def app(server, handler):
        if pending:
            status, headers = pending.pop(0)
            oci_error(handler, status, "UNAVAILABLE", "try later", headers)
            return
        store(server, handler)
    return app


def test_429_with_retry_after_then_success(serve, client):
    server, store, digest, data = blob_server(serve)
    server.app = flaky(store, [(429, {"Retry-After": "1"})])
    started = time.monotonic()
    assert client().get_blob(ref_to(server), digest) == data
    assert time.monotonic() - started >= 0.9
    assert server.count(digest) == 2


def test_503_is_retried_then_succeeds(serve, client):
    server, store, digest, data = blob_server(serve)
    server.app = flaky(store, [(503, {}), (502, {}), (500, {})])
    assert client().get_blob(ref_to(server), digest) == data
    assert server.count(digest) == 4


def test_retries_exhausted_keeps_the_status(serve, client):
    server, store, digest, _ = blob_server(serve)
    server.app = flaky(store, [(503, {})] * 10)
    with pytest.raises(reg.RegistryError) as info:
        client(retries=3).get_blob(ref_to(server), digest)
    assert (info.value.status, info.value.code) == (503, "UNAVAILABLE")
    assert server.count(digest) == 3


def test_other_4xx_are_not_retried(serve, client):
    def app(server, handler):
        oci_error(handler, 400, "NAME_INVALID", "invalid repository name")
    server = serve(app)
    with pytest.raises(reg.RegistryError) as info:
        client().get_manifest(ref_to(server))
    assert info.value.code == "NAME_INVALID"
    assert len(server.requests) == 1


def test_connection_refused_is_retried_then_reported(client):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ref = reg.parse_reference("127.0.0.1:%d/test/app:v1" % port)
    with pytest.raises(reg.RegistryError) as info:
        client(retries=2).get_manifest(ref)
    assert "giving up after 2 attempts" in str(info.value)


def test_retry_after_forms():
    assert reg._retry_after("3") == 3.0
    assert reg._retry_after("9999") == reg.RETRY_AFTER_MAX_S
    assert reg._retry_after(None) is None and reg._retry_after("x") is None
    soon = time.strftime("%a, %d %b %Y %H:%M:%S GMT",
                         time.gmtime(time.time() + 30))
    assert 25 <= reg._retry_after(soon) <= 30
    past = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert reg._retry_after(past) == 0.0


# -- redirects ----------------------------------------------------------


def test_redirect_to_another_host_drops_authorization(serve, client):
    storage_server, _, digest, data = blob_server(serve)

    def app(server, handler):
        if handler.headers.get("Authorization") != reg._basic("u", "p"):
            reply(handler, 401, b"", {"WWW-Authenticate": 'Basic realm="r"'})
            return
        location = "http://%s/storage/blobs/%s?sig=1" % (storage_server.host,
                                                   digest)
        reply(handler, 307, b"", {"Location": location})
    registry_server = serve(app)
    keychain = reg.Keychain()
    keychain.add(registry_server.host, "u", "p")
    got = client(keychain=keychain).get_blob(ref_to(registry_server),
                                             digest)
    assert got == data
    arrived = storage_server.requests[-1]
    assert arrived.path.startswith("/storage/")
    assert "Authorization" not in arrived.headers


def test_relative_redirect_on_the_same_host(serve, client):
    server, store, digest, data = blob_server(serve)

    def app(server, handler):
        if "/moved/" in handler.path:
            handler.path = "/v2/test/app/blobs/" + digest
            store(server, handler)
            return
        reply(handler, 302, b"", {"Location": "/moved/" + digest})
    server.app = app
    assert client().get_blob(ref_to(server), digest) == data


def test_redirect_loop_is_cut(serve, client):
    def app(server, handler):
        reply(handler, 302, b"", {"Location": handler.path})
    server = serve(app)
    with pytest.raises(reg.RegistryError) as info:
        client().get_blob(ref_to(server), DIGEST)
    assert "more than 10 redirects" in str(info.value)
    assert len(server.requests) == 11


# -- connections --------------------------------------------------------


def test_keep_alive_across_sequential_calls(serve, client):
    server, store, digest, data = blob_server(serve)
    store.add_image("test/app", tag="v1")
    registry_client = client()
    ref = ref_to(server)
    for _ in range(5):
        registry_client.get_manifest(ref)
        registry_client.blob_size(ref, digest)
        assert registry_client.read_range(ref, digest, 3, 4) == data[3:7]
        assert registry_client.get_blob(ref, digest) == data
    assert len(server.requests) == 20
    assert len(server.peers) == 1


def test_keep_alive_across_threads(serve, client):
    server, _, digest, data = blob_server(serve)
    registry_client = client()
    ref = ref_to(server)
    errors = []

    def work():
        try:
            for _ in range(10):
                assert registry_client.get_blob(ref, digest) == data
        except Exception as e:  # collected for the main thread
            errors.append(e)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert len(server.requests) == 40
    assert len(server.peers) <= 4


def test_unread_blob_closes_its_connection(serve, client):
    server, _, digest, _ = blob_server(serve, b"q" * 300000)
    registry_client = client()
    with registry_client.open_blob(ref_to(server), digest) as reader:
        reader.read(10)
    registry_client.blob_size(ref_to(server), digest)
    assert len(server.peers) == 2


def test_stale_pooled_connection_is_replaced(serve, client):
    server, store, digest, data = blob_server(serve)

    def app(server, handler):
        store(server, handler)
        # Close without "Connection: close", like an idle timeout would.
        handler.close_connection = True
    server.app = app
    registry_client = client(retries=1)
    for _ in range(3):
        assert registry_client.get_blob(ref_to(server), digest) == data
    assert len(server.peers) == 3


class CountingConnection:
    closed = 0

    def close(self):
        CountingConnection.closed += 1


def test_pool_keeps_a_bounded_number_of_idle_connections():
    pool = reg._Pool(lambda key: CountingConnection(), idle_max=2)
    CountingConnection.closed = 0
    taken = [pool.take("k") for _ in range(4)]
    assert [reused for _, reused in taken] == [False] * 4
    for conn, _ in taken:
        pool.give("k", conn)
    assert CountingConnection.closed == 2
    assert pool.take("k")[1] is True
    pool.close()
    assert CountingConnection.closed == 3


def test_error_bodies_are_read_only_up_to_64_kib(serve, client):
    def app(server, handler):
        body = b'{"errors": [{"code": "X", "message": "%s"}]}' % (
            b"m" * 200000)
        reply(handler, 400, body)
    server = serve(app)
    with pytest.raises(reg.RegistryError) as info:
        client().get_manifest(ref_to(server))
    # The cut body is no valid JSON, so the HTTP reason is used.
    assert str(info.value).endswith("bad request (HTTP 400)")


def test_plain_http_fallback_is_remembered(serve, client):
    server, _, digest, _ = blob_server(serve)
    registry_client = client()
    registry_client.blob_size(ref_to(server), digest)
    assert registry_client._schemes[server.host] == "http"
    assert registry_client._base_url(server.host).startswith("http://")


def test_remote_hosts_never_use_plain_http(client):
    registry_client = client()
    assert registry_client._base_url("example.com") == "https://example.com"
    assert registry_client._base_url("10.0.0.1:5000").startswith("https:")
    insecure = client(insecure=["other.test:5000"])
    assert insecure._insecure("other.test", 5000)
    assert not insecure._insecure("other.test", 5001)


# -- authentication -----------------------------------------------------


class TokenRealm:
    """A registry guarded by bearer tokens from its own /token endpoint."""

    def __init__(self, store, token_field="token", expires_in=None):
        self.store = store
        self.token_field = token_field
        self.expires_in = expires_in
        self.valid = set()
        self.issued = 0
        self.token_requests = []

    def __call__(self, server, handler):
        if handler.path.startswith("/token"):
            self.token(handler)
            return
        given = handler.headers.get("Authorization", "")
        if given.removeprefix("Bearer ") not in self.valid:
            challenge = ('Bearer realm="http://%s/token",service="fake",'
                         'scope="repository:test/app:pull,push"'
                         % server.host)
            oci_error(handler, 401, "UNAUTHORIZED", "authentication "
                      "required", {"WWW-Authenticate": challenge})
            return
        self.store(server, handler)

    def token(self, handler):
        self.token_requests.append(snapshot(handler))
        self.issued += 1
        token = "token-%d" % self.issued
        self.valid.add(token)
        answer = {self.token_field: token}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        reply(handler, 200, json.dumps(answer).encode())


def token_server(serve, **kwargs):
    store = Store()
    store.add_image("test/app", tag="v1")
    realm = TokenRealm(store, **kwargs)
    return serve(realm), realm


def test_bearer_anonymous_flow_and_cache(serve, client):
    server, realm = token_server(serve)
    registry_client = client()
    for _ in range(3):
        registry_client.get_manifest(ref_to(server))
    assert len(realm.token_requests) == 1
    query = urllib.parse.parse_qs(
        urllib.parse.urlsplit(realm.token_requests[0].path).query)
    assert query == {"service": ["fake"],
                     "scope": ["repository:test/app:pull"]}
    assert "Authorization" not in realm.token_requests[0].headers
    # One 401, one token, then three authorized manifest requests.
    assert server.count("/manifests/") == 4


def test_bearer_with_credentials_and_access_token(serve, client):
    server, realm = token_server(serve, token_field="access_token")
    keychain = reg.Keychain()
    keychain.add(server.host, "user", "secret")
    client(keychain=keychain).get_manifest(ref_to(server))
    sent = realm.token_requests[0].headers["Authorization"]
    assert sent == "Basic " + b64("user:secret")
    assert server.requests[-1].headers["Authorization"] == "Bearer token-1"


def test_expired_bearer_token_is_refetched_once(serve, client):
    server, realm = token_server(serve)
    registry_client = client()
    registry_client.get_manifest(ref_to(server))
    realm.valid.clear()
    registry_client.get_manifest(ref_to(server))
    assert len(realm.token_requests) == 2
    assert server.requests[-1].headers["Authorization"] == "Bearer token-2"


class NothingValid(set):
    """A token set that takes tokens in but never accepts one."""

    def __contains__(self, token):
        return False


def test_refused_fresh_token_is_an_auth_error(serve, client):
    server, realm = token_server(serve)
    realm.valid = NothingValid()
    with pytest.raises(reg.AuthError) as info:
        client().get_manifest(ref_to(server))
    assert (info.value.status, info.value.code) == (401, "UNAUTHORIZED")
    assert len(realm.token_requests) == 1


def test_token_cache_honours_expires_in(serve, client, monkeypatch):
    server, realm = token_server(serve, expires_in=30)
    registry_client = client()
    now = [1000.0]
    monkeypatch.setattr(reg.time, "monotonic", lambda: now[0])
    registry_client.get_manifest(ref_to(server))
    now[0] += 19
    registry_client.get_manifest(ref_to(server))
    assert len(realm.token_requests) == 1
    now[0] += 2
    registry_client.get_manifest(ref_to(server))
    assert len(realm.token_requests) == 2


def test_token_endpoint_failure_is_an_auth_error(serve, client):
    server, realm = token_server(serve)

    def refuse(handler):
        realm.token_requests.append(snapshot(handler))
        reply(handler, 401, b"")
    realm.token = refuse
    with pytest.raises(reg.AuthError) as info:
        client().get_manifest(ref_to(server))
    assert "token request to http://%s/token failed" % server.host in \
        str(info.value)


def test_challenge_parsing():
    header = ('Bearer realm="https://auth.example/token?a=1",'
              'service="registry.example",scope="repository:a/b:pull,push"'
              ',error="insufficient_scope"')
    scheme, params = reg._parse_challenge(header)
    assert scheme == "bearer"
    assert params["realm"] == "https://auth.example/token?a=1"
    assert params["scope"] == "repository:a/b:pull,push"
    assert reg._parse_challenge('Basic realm="r\\"q"') == (
        "basic", {"realm": 'r"q'})


def basic_server(serve):
    store = Store()
    store.add_image("test/app", tag="v1")

    def app(server, handler):
        if handler.headers.get("Authorization") != reg._basic("test", "pw"):
            oci_error(handler, 401, "UNAUTHORIZED", "authentication "
                      "required", {"WWW-Authenticate": 'Basic realm="x"'})
            return
        store(server, handler)
    return serve(app)


def test_basic_auth(serve, client):
    server = basic_server(serve)
    keychain = reg.Keychain()
    keychain.add(server.host, "test", "pw")
    registry_client = client(keychain=keychain)
    registry_client.get_manifest(ref_to(server))
    registry_client.get_manifest(ref_to(server))
    # Only the first request went out without credentials.
    assert server.count("/manifests/") == 3


def test_basic_auth_wrong_or_missing_credentials(serve, client):
    server = basic_server(serve)
    keychain = reg.Keychain()
    keychain.add(server.host, "test", "wrong")
    with pytest.raises(reg.AuthError) as info:
        client(keychain=keychain).get_manifest(ref_to(server))
    assert info.value.status == 401
    assert server.count("/manifests/") == 2
    with pytest.raises(reg.AuthError) as info:
        client().get_manifest(ref_to(server))
    assert "no credentials for %s in the keychain" % server.host in \
        str(info.value)


def test_403_is_an_auth_error(serve, client):
    def app(server, handler):
        oci_error(handler, 403, "DENIED", "requested access is denied")
    server = serve(app)
    with pytest.raises(reg.AuthError) as info:
        client().get_manifest(ref_to(server))
    assert info.value.code == "DENIED"


# -- keychains ----------------------------------------------------------


def write_config(tmp_path, config):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return str(path)


HELPER = """#!/bin/sh
server=$(cat)
echo "$0 $server" >> "%(log)s"
case "$server" in
  fail.example) echo "boom: helper broke" >&2; exit 3 ;;
  none.example) echo "credentials not found in native keychain"; exit 1 ;;
esac
printf '{"ServerURL":"%%s","Username":"%(user)s","Secret":"s-%%s"}' \\
  "$server" "$server"
"""


@pytest.fixture
def helper(tmp_path, monkeypatch):
    """Install docker-credential-fake on PATH; return its call log."""
    folder = tmp_path / "bin"
    folder.mkdir()
    log_path = tmp_path / "helper.log"
    for name, user in (("fake", "helper-user"), ("store", "store-user")):
        script = folder / ("docker-credential-" + name)
        script.write_text(HELPER % {"log": log_path, "user": user})
        script.chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (folder, os.environ["PATH"]))
    return log_path


def test_docker_config_auths(tmp_path):
    path = write_config(tmp_path, {"auths": {
        "https://index.docker.io/v1/": {"auth": b64("hub:pw")},
        "127.0.0.1:5001": {"username": "test", "password": "testpass"},
        "https://quay.io": {"auth": b64("q:p:with:colons")},
        "placeholder.example": {},
    }})
    keychain = reg.Keychain.from_docker_config(path)
    assert keychain.get("registry-1.docker.io") == ("hub", "pw")
    assert keychain.get("docker.io") == ("hub", "pw")
    assert keychain.get("127.0.0.1:5001") == ("test", "testpass")
    assert keychain.get("quay.io") == ("q", "p:with:colons")
    assert keychain.get("placeholder.example") is None
    assert keychain.get("other.example") is None


def test_docker_config_default_path(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    write_config(tmp_path, {"auths": {"h:1": {"auth": b64("a:b")}}})
    assert reg.Keychain.from_docker_config().get("h:1") == ("a", "b")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "missing"))
    assert reg.Keychain.from_docker_config().get("h:1") is None
    monkeypatch.delenv("DOCKER_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert reg.Keychain.from_docker_config().get("h:1") is None


def test_docker_config_that_is_not_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{oops")
    with pytest.raises(reg.RegistryError) as info:
        reg.Keychain.from_docker_config(str(path))
    assert "not valid json" in str(info.value)


def test_credential_helpers(tmp_path, helper):
    path = write_config(tmp_path, {
        "credHelpers": {"helped.example": "fake", "fail.example": "fake",
                        "none.example": "fake",
                        "absent.example": "nothere"},
        "credsStore": "store",
    })
    keychain = reg.Keychain.from_docker_config(path)
    # Helpers run lazily, at get() time.
    assert not helper.exists()
    assert keychain.get("helped.example") == ("helper-user",
                                              "s-helped.example")
    assert keychain.get("docker.io") == (
        "store-user", "s-https://index.docker.io/v1/")
    assert keychain.get("none.example") is None
    with pytest.raises(reg.AuthError) as info:
        keychain.get("fail.example")
    assert "docker-credential-fake failed (exit 3): boom" in str(info.value)
    with pytest.raises(reg.AuthError) as info:
        keychain.get("absent.example")
    assert "docker-credential-nothere not found" in str(info.value)
    assert "docker-credential-fake helped.example" in helper.read_text()


def test_credential_helper_feeds_the_client(serve, client, tmp_path,
                                            helper):
    server = basic_server(serve)
    path = write_config(tmp_path, {"credHelpers": {server.host: "fake"}})
    keychain = reg.Keychain.from_docker_config(path)
    with pytest.raises(reg.AuthError):
        client(keychain=keychain).get_manifest(ref_to(server))
    credentials = reg._basic("helper-user", "s-" + server.host)
    assert server.requests[-1].headers["Authorization"] == credentials


def test_kubernetes_secret_dockerconfigjson():
    config = {"auths": {"reg.example:5000": {"auth": b64("k:v")}}}
    data = {".dockerconfigjson": b64(json.dumps(config))}
    keychain = reg.Keychain.from_secret("kubernetes.io/dockerconfigjson",
                                        data)
    assert keychain.get("reg.example:5000") == ("k", "v")


def test_kubernetes_secret_dockercfg():
    config = {"https://index.docker.io/v1/": {"username": "u",
                                              "password": "p"}}
    data = {".dockercfg": b64(json.dumps(config))}
    keychain = reg.Keychain.from_secret("kubernetes.io/dockercfg", data)
    assert keychain.get("docker.io") == ("u", "p")


@pytest.mark.parametrize("secret_type, data, words", [
    ("Opaque", {}, "unsupported secret type"),
    ("kubernetes.io/dockercfg", {}, "no '.dockercfg' key"),
    ("kubernetes.io/dockercfg", {".dockercfg": "!!"}, "not base64 json"),
])
def test_kubernetes_secret_errors(secret_type, data, words):
    with pytest.raises(reg.RegistryError) as info:
        reg.Keychain.from_secret(secret_type, data)
    assert words in str(info.value)


def test_credential_helper_timeout(tmp_path, monkeypatch):
    script = tmp_path / "docker-credential-slow"
    script.write_text("#!/bin/sh\nexec sleep 10\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (tmp_path, os.environ["PATH"]))
    monkeypatch.setattr(reg, "HELPER_TIMEOUT_S", 0.5)
    keychain = reg.Keychain.from_docker_config(write_config(
        tmp_path, {"credsStore": "slow"}))
    with pytest.raises(reg.AuthError) as info:
        keychain.get("any.example")
    assert "docker-credential-slow timed out" in str(info.value)


def test_keychain_add_and_merge():
    first = reg.Keychain()
    first.add("h", "a", "1")
    first.add("h", "b", "2")
    assert first.get("h") == ("b", "2")
    second = reg.Keychain()
    second.add("h", "c", "3")
    second.add("other", "d", "4")
    merged = first.merge(second)
    assert merged.get("h") == ("c", "3") and merged.get("other")
    assert first.get("h") == ("b", "2")


# -- real registries ----------------------------------------------------

@pytest.fixture(scope="module")
def pushed(registries):
    """One image with two gzip layers, pushed to the shared storage."""
    layers = [gzip.compress(os.urandom(200000) + bytes(300000), 6),
              gzip.compress(b"small layer\n" * 100, 6)]
    tag = "t%d" % int(time.time() * 1000)
    image = testimages.push_image(registries.plain,
                                  "test/registry-py", tag, layers,
                                  index=True)
    return tag, layers, image


def real_ref(host, tag):
    return reg.parse_reference("%s/test/registry-py:%s" % (host, tag))


def test_real_pull_manifest_and_blobs(registries, pushed, client):
    tag, layers, image = pushed
    registry_client = client()
    ref = real_ref(registries.plain, tag)
    resolved = registry_client.resolve_image(ref, platform="linux/amd64")
    assert resolved.digest == image["manifest_digest"]
    assert resolved.index_digest == image["index_digest"]
    assert [(d["digest"], d["size"]) for d in resolved.layers] == \
        [(layer[0], layer[1]) for layer in image["layers"]]
    config = json.loads(registry_client.get_blob(
        ref, resolved.config["digest"]))
    assert config["architecture"] == "amd64"
    with registry_client.open_blob(ref, image["layers"][0][0]) as reader:
        assert reader.read() == layers[0]
    assert registry_client.blob_size(ref, image["layers"][1][0]) == \
        len(layers[1])


def test_real_range_reads(registries, pushed, client):
    tag, layers, image = pushed
    registry_client = client()
    ref = real_ref(registries.plain, tag)
    digest = image["layers"][0][0]
    blob = layers[0]
    for offset, length in ((0, 1), (100, 100), (65536, 65536),
                           (len(blob) - 7, 7), (0, len(blob))):
        got = registry_client.read_range(ref, digest, offset, length)
        assert got == blob[offset:offset + length]


def test_real_unsatisfiable_range_is_a_range_error(registries, pushed, client):
    tag, layers, image = pushed
    ref = real_ref(registries.plain, tag)
    started = time.monotonic()
    with pytest.raises(reg.RangeError) as info:
        client(timeout=10).read_range(ref, image["layers"][0][0],
                                      len(layers[0]) + 10, 10)
    assert info.value.status == 416
    assert time.monotonic() - started < 3


def test_real_missing_blob_and_manifest(registries, pushed, client):
    tag, _, _ = pushed
    registry_client = client()
    ref = real_ref(registries.plain, tag)
    with pytest.raises(reg.NotFoundError) as info:
        registry_client.get_blob(ref, DIGEST)
    assert (info.value.status, info.value.code) == (404, "BLOB_UNKNOWN")
    with pytest.raises(reg.NotFoundError) as info:
        registry_client.get_manifest(real_ref(ref.registry, "no-such-tag"))
    assert info.value.code == "MANIFEST_UNKNOWN"


def real_keychain(registries, host, password=None):
    keychain = reg.Keychain()
    keychain.add(host, registries.user,
                 password or registries.password)
    return keychain


def test_real_basic_auth(registries, pushed, client):
    tag, layers, image = pushed
    host = registries.auth
    registry_client = client(keychain=real_keychain(registries, host))
    resolved = registry_client.resolve_image(real_ref(host, tag),
                                             "linux/amd64")
    assert resolved.digest == image["manifest_digest"]
    assert registry_client.get_blob(
        real_ref(host, tag), image["layers"][1][0]) == layers[1]


def test_real_basic_auth_wrong_password(registries, pushed, client):
    tag, _, _ = pushed
    host = registries.auth
    keychain = real_keychain(registries, host, password="wrong-password")
    with pytest.raises(reg.AuthError) as info:
        client(keychain=keychain).get_manifest(real_ref(host, tag))
    assert info.value.status == 401
    with pytest.raises(reg.AuthError):
        client().get_manifest(real_ref(host, tag))


def test_real_tls_with_ca_file(registries, pushed, client):
    tag, layers, image = pushed
    host = registries.tls
    registry_client = client(keychain=real_keychain(registries, host),
                             ca_file=registries.ca)
    ref = real_ref(host, tag)
    assert registry_client.get_manifest(ref).digest == image["index_digest"]
    assert registry_client._schemes[host] == "https"
    digest = image["layers"][0][0]
    assert registry_client.read_range(ref, digest, 10, 50) == \
        layers[0][10:60]


def test_real_tls_without_the_ca(registries, pushed, client):
    tag, _, _ = pushed
    host = registries.tls
    registry_client = client(keychain=real_keychain(registries, host))
    with pytest.raises(reg.RegistryError) as info:
        registry_client.get_manifest(real_ref(host, tag))
    assert str(info.value).startswith(
        "https://%s: tls certificate not trusted" % host)
    assert "pass ca_file" in str(info.value)


def test_real_tls_insecure_host_skips_verification(registries, pushed, client):
    tag, _, image = pushed
    host = registries.tls
    registry_client = client(keychain=real_keychain(registries, host),
                             insecure=[host])
    assert registry_client.get_manifest(real_ref(host, tag)).digest == \
        image["index_digest"]
