"""Tests for testimages.py: layers it builds and images it pushes.

Images are read back from the real test registries with urllib only, so
these tests also check the environment scripts/env-up.sh starts.
"""

import base64
import gzip
import hashlib
import io
import json
import os
import ssl
import stat
import subprocess
import tarfile
import urllib.error
import urllib.request

import pytest

import testimages
from testimages import Entry

MANIFEST_TYPES = ", ".join([
    testimages.OCI_MANIFEST, testimages.OCI_INDEX,
    testimages.DOCKER_MANIFEST, testimages.DOCKER_LIST,
])


def fetch(host, path, *, auth=None, ca=None):
    """GET https?://host/path; return (status, headers, body)."""
    scheme = "https" if ca else "http"
    req = urllib.request.Request("%s://%s%s" % (scheme, host, path))
    req.add_header("Accept", MANIFEST_TYPES)
    if auth:
        token = base64.b64encode(("%s:%s" % auth).encode()).decode()
        req.add_header("Authorization", "Basic " + token)
    context = ssl.create_default_context(cafile=ca) if ca else None
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def small_tar(fmt="pax"):
    return testimages.tar_layer([
        Entry("bin", type="dir", mode=0o755),
        Entry("bin/hello", b"#!/bin/sh\necho hello\n", mode=0o755),
        Entry("bin/hi", type="symlink", linkname="hello"),
    ], fmt=fmt)


def check_image(host, repo, tag, pushed, layers, *, auth=None, ca=None):
    """Read the image back and compare every blob with what was pushed."""
    status, headers, body = fetch(host, "/v2/%s/manifests/%s" % (repo, tag),
                                  auth=auth, ca=ca)
    assert status == 200
    assert sha256(body) == pushed["manifest_digest"]
    assert headers["Docker-Content-Digest"] == pushed["manifest_digest"]
    manifest = json.loads(body)
    assert headers["Content-Type"] == manifest["mediaType"]
    got = [(d["digest"], d["size"], d["mediaType"])
           for d in manifest["layers"]]
    assert got == pushed["layers"]

    for blob, (digest, size, _) in zip(layers, pushed["layers"]):
        status, _, body = fetch(host, "/v2/%s/blobs/%s" % (repo, digest),
                                auth=auth, ca=ca)
        assert status == 200
        assert body == blob and len(body) == size
        assert sha256(body) == digest

    config_digest = manifest["config"]["digest"]
    assert config_digest == pushed["config_digest"]
    _, _, body = fetch(host, "/v2/%s/blobs/%s" % (repo, config_digest),
                       auth=auth, ca=ca)
    assert sha256(body) == config_digest
    return manifest, json.loads(body)


# Pushing -------------------------------------------------------------


def test_push_image_to_plain_registry(registries, repo):
    tar = small_tar()
    layers = [tar, testimages.gzip_layer(small_tar("gnu"))]
    pushed = testimages.push_image(registries.plain, repo, "v1", layers)
    _, config = check_image(registries.plain, repo, "v1", pushed, layers)

    assert [mt for _, _, mt in pushed["layers"]] == [
        testimages.OCI_LAYER, testimages.OCI_LAYER_GZIP]
    assert pushed["index_digest"] is None
    assert config["architecture"] == "amd64" and config["os"] == "linux"
    # diff_ids name the uncompressed tars.
    assert config["rootfs"]["diff_ids"] == [
        sha256(tar), sha256(small_tar("gnu"))]


def test_push_is_idempotent(registries, repo):
    layers = [testimages.gzip_layer(small_tar())]
    first = testimages.push_image(registries.plain, repo, "v1", layers)
    again = testimages.push_image(registries.plain, repo, "v2", layers)
    assert again == first


@pytest.mark.parametrize("docker", [False, True], ids=["oci", "docker"])
def test_push_index_lists_two_platforms(registries, repo, docker):
    layers = [testimages.gzip_layer(small_tar())]
    pushed = testimages.push_image(registries.plain, repo, "multi", layers,
                                   index=True, docker=docker)
    status, headers, body = fetch(registries.plain,
                                  "/v2/%s/manifests/multi" % repo)
    assert status == 200
    assert sha256(body) == pushed["index_digest"]
    index = json.loads(body)
    want = testimages.DOCKER_LIST if docker else testimages.OCI_INDEX
    assert index["mediaType"] == want == headers["Content-Type"]
    arches = [m["platform"]["architecture"] for m in index["manifests"]]
    assert arches == ["amd64", "arm64"]
    assert index["manifests"][0]["digest"] == pushed["manifest_digest"]

    manifest, _ = check_image(registries.plain, repo,
                              pushed["manifest_digest"], pushed, layers)
    want = testimages.DOCKER_MANIFEST if docker else testimages.OCI_MANIFEST
    assert manifest["mediaType"] == want
    if docker:
        assert pushed["layers"][0][2] == testimages.DOCKER_LAYER_GZIP


def test_push_to_tls_registry_with_ca(registries, repo):
    creds = (registries.user, registries.password)
    layers = [testimages.gzip_layer(small_tar())]
    pushed = testimages.push_image(registries.tls, repo, "v1", layers,
                                   auth=creds, tls=True, ca=registries.ca)
    check_image(registries.tls, repo, "v1", pushed, layers, auth=creds,
                ca=registries.ca)


def test_auth_registry_wants_basic_credentials(registries, repo):
    status, headers, _ = fetch(registries.auth, "/v2/")
    assert status == 401
    assert headers["Www-Authenticate"].startswith("Basic ")
    wrong = (registries.user, "wrong")
    assert fetch(registries.auth, "/v2/", auth=wrong)[0] == 401

    layers = [small_tar()]
    with pytest.raises(testimages.PushError, match="401"):
        testimages.push_image(registries.auth, repo, "v1", layers)
    creds = (registries.user, registries.password)
    pushed = testimages.push_image(registries.auth, repo, "v1", layers,
                                   auth=creds)
    check_image(registries.auth, repo, "v1", pushed, layers, auth=creds)


def test_registries_share_storage(registries, repo):
    layers = [small_tar()]
    pushed = testimages.push_image(registries.plain, repo, "v1", layers)
    creds = (registries.user, registries.password)
    check_image(registries.auth, repo, "v1", pushed, layers, auth=creds)


def test_registry_env_names_test_sh_when_unset(monkeypatch):
    monkeypatch.delenv("HERMES_TEST_REGISTRY", raising=False)
    with pytest.raises(RuntimeError, match=r"run \./test\.sh"):
        testimages.registry_env()


# Layers --------------------------------------------------------------

LONG_DIR = "deep/" + "d" * 60
LONG_NAME = LONG_DIR + "/" + "f" * 80  # over 100: ustar needs its prefix


def sample_entries():
    return [
        Entry("etc", type="dir", mode=0o755),
        Entry("etc/motd", b"hello\n"),
        Entry("etc/empty", b""),
        Entry("etc/motd.link", type="symlink", linkname="motd"),
        Entry("etc/motd.hard", type="hardlink", linkname="etc/motd"),
        Entry("etc/run.sh", b"#!/bin/sh\n", mode=0o755),
        Entry("etc/pipe", type="fifo"),
        Entry("deep", type="dir", mode=0o755),
        Entry(LONG_DIR, type="dir", mode=0o700),
        Entry(LONG_NAME, testimages.random_bytes(70000, seed=3)),
    ]


def extract(tar_bytes, dest):
    os.mkdir(dest)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar_bytes,
                   check=True)
    return tree(dest)


def tree(root):
    """Map each path under root to (kind, mode, mtime, content)."""
    found = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    content = (f.read(), st.st_nlink)
            else:
                content = None
            rel = os.path.relpath(path, root)
            found[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                          int(st.st_mtime), content)
    return found


@pytest.mark.parametrize("fmt", ["pax", "gnu", "ustar"])
def test_tar_layer_extracts_with_gnu_tar(tmp_path, fmt):
    entries = sample_entries()
    got = extract(testimages.tar_layer(entries, fmt=fmt), tmp_path / fmt)

    assert sorted(got) == sorted(e.name for e in entries)
    for e in entries:
        kind, mode, mtime, content = got[e.name]
        if e.type != "symlink":
            assert (mode, mtime) == (e.mode, 1700000000), e.name
        if e.type == "symlink":
            assert content == e.linkname
        elif e.type == "file":
            links = 2 if e.name == "etc/motd" else 1
            assert content == (e.data, links), e.name
        elif e.type == "hardlink":
            assert content == (b"hello\n", 2)
        elif e.type == "fifo":
            assert stat.S_ISFIFO(kind)


def test_tar_formats_extract_to_the_same_tree(tmp_path):
    trees = [extract(testimages.tar_layer(sample_entries(), fmt=fmt),
                     tmp_path / fmt)
             for fmt in ("pax", "gnu", "ustar")]
    assert trees[0] == trees[1] == trees[2]


def test_gnu_tar_layer_round_trips(tmp_path):
    first = extract(testimages.tar_layer(sample_entries()), tmp_path / "a")
    for fmt in ("pax", "gnu"):
        layer = testimages.gnu_tar_layer(tmp_path / "a", fmt=fmt)
        assert extract(layer, tmp_path / fmt) == first
        names = tarfile.open(fileobj=io.BytesIO(layer)).getnames()
        assert "./" + LONG_NAME in names


def test_tar_layer_is_deterministic_and_keeps_extras():
    entries = sample_entries() + [
        Entry("dev", type="dir", mode=0o755),
        Entry("dev/null", type="char", mode=0o666, devmajor=1,
              devminor=3),
        Entry("dev/loop0", type="block", devmajor=7, devminor=0),
        Entry("etc/x", b"x", pax={"SCHILY.xattr.user.k": "v"}),
    ]
    layer = testimages.tar_layer(entries)
    assert layer == testimages.tar_layer(entries)

    members = {m.name: m for m in tarfile.open(fileobj=io.BytesIO(layer))}
    assert members["dev/null"].ischr()
    assert (members["dev/null"].devmajor, members["dev/null"].devminor) \
        == (1, 3)
    assert members["dev/loop0"].isblk()
    assert members["etc/x"].pax_headers["SCHILY.xattr.user.k"] == "v"
    assert {(m.uid, m.gid) for m in members.values()} == {(0, 0)}


# Compression ---------------------------------------------------------


def test_gzip_layer_header_fields():
    tar = small_tar()
    plain = testimages.gzip_layer(tar)
    assert plain[3] == 0 and plain[4:8] == b"\0\0\0\0"  # no flags, mtime 0
    assert gzip.decompress(plain) == tar

    layer = testimages.gzip_layer(tar, level=9, filename="layer.tar",
                                  comment="made by hermes tests",
                                  extra=b"AB\x02\x00hi")
    assert layer[3] == 0x04 | 0x08 | 0x10  # FEXTRA, FNAME, FCOMMENT
    assert b"layer.tar\0made by hermes tests\0" in layer[:64]
    assert gzip.decompress(layer) == tar
    # GNU gzip checks the CRC and size trailer too.
    out = subprocess.run(["gzip", "-dc"], input=layer, check=True,
                         stdout=subprocess.PIPE).stdout
    assert out == tar


def test_pigz_layer_decompresses_to_the_tar():
    tar = testimages.tar_layer(testimages.big_layer_files(total_mib=1))
    layer = testimages.pigz_layer(tar, block_kib=32)
    assert layer[:2] == b"\x1f\x8b"
    assert gzip.decompress(layer) == tar
    assert layer == testimages.pigz_layer(tar, block_kib=32)


def test_big_layer_gzips_to_over_10_mib():
    files = testimages.big_layer_files()
    assert files == testimages.big_layer_files()
    layer = testimages.gzip_layer(testimages.tar_layer(files), level=1)
    assert len(layer) > 10 * 1024 * 1024
