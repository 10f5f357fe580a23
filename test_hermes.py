"""Tests of the hermes command line against the real test registries.

Most tests call `hermes.main` in-process and read what it wrote through
`capsysbinary` (`cat` writes raw bytes, which `capsys` cannot decode);
one test runs `python hermes.py` to check exit codes and the separation
of stdout and stderr.  Every test keeps its store under its tmp_path.
The image with four layers is pushed once per module and extracted once
with GNU tar, which is the reference every `cat` and `ls` is held to.
"""

import base64
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import types

import pytest

import hermes
import registry
import soci
import store as store_mod
import testimages
from testimages import Entry

MiB = 1024 * 1024
HERE = os.path.dirname(os.path.abspath(__file__))
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}\Z")
FETCHED_RE = re.compile(
    r"hermes: fetched (\d+) of (\d+) bytes \([\d.]+%\) of layer "
    r"(sha256:[0-9a-f]{64})$")
# The layers of the module's main image, bottom first.
SMALL, BIG, PIGZ, PLAIN = range(4)


# ------------------------------------------------------------ helpers

def run(cap, *args):
    """Run hermes in-process: (exit code, stdout bytes, stderr text)."""
    code = hermes.main([str(a) for a in args])
    out, err = cap.readouterr()
    return code, out, err.decode()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_path(store_dir, digest):
    return os.path.join(store_dir, "blobs", "sha256", digest[7:])


def read_blob(store_dir, digest):
    with open(blob_path(store_dir, digest), "rb") as f:
        return f.read()


def last_line(out):
    return out.decode().splitlines()[-1]


def ls_names(out):
    """The names `hermes ls` printed, without "/" or "-> target"."""
    names = []
    for line in out.decode().splitlines():
        shown = line.split(None, 5)[5]
        names.append(shown.split(" -> ")[0].rstrip("/"))
    return names


def ls_lines(out):
    """{name: (mode string, size, what follows the name)}."""
    lines = {}
    for line in out.decode().splitlines():
        mode, _, size, _, _, shown = line.split(None, 5)
        name, arrow, target = shown.partition(" -> ")
        lines[name] = (mode, int(size), arrow + target)
    return lines


def fetched(err):
    """(fetched bytes, layer size, layer digest) from cat's stderr."""
    match = FETCHED_RE.search(err.strip())
    assert match, err
    return int(match[1]), int(match[2]), match[3]


def assert_one_error_line(err, *words):
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hermes: error: "), err
    for word in words:
        assert word in lines[0], (word, err)


def write_auth_file(path, host, user, password):
    """A Docker config.json holding Basic credentials for `host`."""
    token = base64.b64encode(("%s:%s" % (user, password)).encode())
    path.write_text(json.dumps(
        {"auths": {host: {"auth": token.decode()}}}))
    return path


def push_raw_image(host, repo, tag, blobs, media_types):
    """Push an image whose layers need not decompress (bad input)."""
    digests = [testimages.push_blob(host, repo, b) for b in blobs]
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers",
                   "diff_ids": [sha256(b"") for _ in blobs]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": testimages.OCI_MANIFEST,
        "config": {"mediaType": testimages.OCI_CONFIG,
                   "digest": testimages.push_blob(host, repo, config),
                   "size": len(config)},
        "layers": [{"mediaType": mt, "digest": d, "size": len(b)}
                   for b, d, mt in zip(blobs, digests, media_types)],
    }).encode()
    testimages.push_manifest(host, repo, tag, manifest,
                             testimages.OCI_MANIFEST)
    return digests


def small_layer(entries):
    return testimages.gzip_layer(testimages.tar_layer(entries))


def push_small_image(host, repo, entries, tag="v1", **kw):
    """Push a one-layer image; return its reference on `host`."""
    testimages.push_image(host, repo, tag, [small_layer(entries)], **kw)
    return "%s/%s:%s" % (host, repo, tag)


HELLO = [Entry("etc", type="dir", mode=0o755),
         Entry("etc/hello", b"hello, world\n")]


# ---------------------------------------------------- the main image

def make_gnu_tree(root):
    """A directory for GNU tar: files, symlinks and a hardlink."""
    app = root / "opt" / "app"
    (app / "lib").mkdir(parents=True)
    (app / "bin").mkdir()
    (app / "README").write_bytes(b"the app\n" * 100)
    (app / "lib" / "libfoo.so").write_bytes(
        testimages.random_bytes(300 * 1024, seed=7))
    (app / "with space.txt").write_bytes(b"spaced out\n")
    (app / ("n" * 120 + ".txt")).write_bytes(b"a long name\n")
    os.symlink("libfoo.so", app / "lib" / "libfoo.so.1")
    os.symlink("../lib/libfoo.so", app / "bin" / "run")
    # --sort=name stores README first, so "hard" becomes the hardlink.
    os.link(app / "README", app / "hard")


def main_layers(tmp_dir):
    small = testimages.gzip_layer(testimages.tar_layer([
        Entry("etc", type="dir", mode=0o755),
        Entry("etc/hostname", b"hermes\n"),
        Entry("etc/motd", b"the old motd\n"),
        Entry("etc/empty", b""),
        Entry("etc/issue", type="symlink", linkname="/etc/motd"),
        Entry("bin", type="dir", mode=0o755),
        Entry("bin/tool", b"#!/bin/sh\necho tool\n", mode=0o755),
    ]))
    big = testimages.gzip_layer(
        testimages.tar_layer(testimages.big_layer_files()))
    make_gnu_tree(tmp_dir)
    pigz = testimages.pigz_layer(testimages.gnu_tar_layer(tmp_dir))
    plain = testimages.tar_layer([
        Entry("etc", type="dir", mode=0o755),
        Entry("etc/motd", b"the new motd\n"),
        Entry("usr/share/doc", type="dir", mode=0o755),
        Entry("usr/share/doc/notes.txt",
              testimages.random_bytes(5000, seed=3)),
        Entry("var", type="dir", mode=0o755),
    ])
    return [small, big, pigz, plain]


def extract(blobs, dest):
    """Extract the layers in order with GNU tar, like a container's fs."""
    dest.mkdir()
    for i, blob in enumerate(blobs):
        layer = dest.parent / ("layer%d" % i)
        layer.write_bytes(blob)
        subprocess.run(["tar", "-xf", str(layer), "-C", str(dest)],
                       check=True)
    return dest


@pytest.fixture(scope="module")
def image(registries, tmp_path_factory):
    """The four-layer image, pushed once, and its tar extraction."""
    work = tmp_path_factory.mktemp("main-image")
    blobs = main_layers(work / "gnu")
    host, repo = registries.plain, "test-hermes-py/main-image"
    pushed = testimages.push_image(host, repo, "v1", blobs)
    return types.SimpleNamespace(
        ref="%s/%s:v1" % (host, repo), host=host, repo=repo,
        blobs=blobs, pushed=pushed, layers=pushed["layers"],
        root=extract(blobs, work / "merged"))


def index_of(store_dir, digest):
    return json.loads(read_blob(store_dir, digest))


def regular_files(root):
    """Image paths ("/a/b") of the regular files under `root`."""
    for top, _, files in os.walk(root):
        for name in files:
            path = os.path.join(top, name)
            if not os.path.islink(path):
                yield "/" + os.path.relpath(path, root)


# ------------------------------------------------------------ 1. build

def test_image_layers_are_the_four_kinds_the_tests_need(image):
    media = [mt for _, _, mt in image.layers]
    assert media == [testimages.OCI_LAYER_GZIP] * 3 + [testimages.OCI_LAYER]
    sizes = [size for _, size, _ in image.layers]
    assert sizes[BIG] > soci.MIN_LAYER_SIZE
    assert all(s < soci.MIN_LAYER_SIZE for i, s in enumerate(sizes)
               if i != BIG)


def test_build_prints_the_digest_of_an_index_kept_in_the_store(
        image, tmp_path, capsysbinary):
    store_dir = tmp_path / "store"
    code, out, err = run(capsysbinary, "build", image.ref,
                         "--store", store_dir)
    assert code == 0, err
    digest = last_line(out)
    assert DIGEST_RE.match(digest)
    assert sha256(read_blob(store_dir, digest)) == digest


def test_default_index_lists_only_the_layer_of_ten_mib_or_more(
        image, tmp_path, capsysbinary):
    store_dir = tmp_path / "store"
    code, out, err = run(capsysbinary, "build", image.ref,
                         "--store", store_dir)
    assert code == 0, err
    index = index_of(store_dir, last_line(out))
    listed = [d["annotations"][soci.ANN_LAYER_DIGEST]
              for d in index["layers"]]
    assert listed == [image.layers[BIG][0]]


@pytest.mark.parametrize("min_size", [1, "pigz layer size"])
def test_index_lists_the_layers_of_at_least_min_size_in_layer_order(
        image, tmp_path, capsysbinary, min_size):
    if min_size == "pigz layer size":
        min_size = image.layers[PIGZ][1]
    store_dir = tmp_path / "store"
    code, out, err = run(capsysbinary, "build", image.ref,
                         "--store", store_dir, "--span-size", 2 * MiB,
                         "--min-layer-size", min_size)
    assert code == 0, err
    index = index_of(store_dir, last_line(out))
    wanted = [(d, mt) for d, size, mt in image.layers if size >= min_size]
    assert len(wanted) >= 2
    listed = []
    for desc in index["layers"]:
        ann = desc["annotations"]
        listed.append((ann[soci.ANN_LAYER_DIGEST],
                       ann[soci.ANN_LAYER_MEDIA_TYPE]))
        assert ann[soci.ANN_SPAN_SIZE] == str(2 * MiB)
        ztoc = read_blob(store_dir, desc["digest"])
        assert sha256(ztoc) == desc["digest"]
        assert len(ztoc) == desc["size"]
    assert listed == wanted


def test_building_again_gives_the_same_digest_and_reads_no_layer(
        image, tmp_path, capsysbinary, monkeypatch):
    store_dir = tmp_path / "store"
    args = ["build", image.ref, "--store", store_dir,
            "--min-layer-size", 1]
    code, out, err = run(capsysbinary, *args)
    assert code == 0, err
    first = last_line(out)

    opened = []
    real_open_blob = registry.Client.open_blob

    def counting_open_blob(client, ref, digest):
        opened.append(digest)
        return real_open_blob(client, ref, digest)

    monkeypatch.setattr(registry.Client, "open_blob", counting_open_blob)
    code, out, err = run(capsysbinary, *args)
    assert code == 0, err
    assert last_line(out) == first
    # Only the small config blob is read (to check the platform).
    assert opened == [image.pushed["config_digest"]]


def test_store_build_image_reports_every_layer_cached_the_second_time(
        image, tmp_path):
    store = store_mod.Store(tmp_path / "store")
    client = registry.Client()
    resolved = client.resolve_image(registry.parse_reference(image.ref),
                                    "linux/amd64")
    first = store_mod.build_image(client, store, resolved, min_layer_size=1)
    second = store_mod.build_image(client, store, resolved,
                                   min_layer_size=1)
    assert [r.outcome for r in first.layers] == ["built"] * 4
    assert [r.outcome for r in second.layers] == ["cached"] * 4
    assert second.index_digest == first.index_digest
    assert [r.ztoc_digest for r in second.layers] == \
        [r.ztoc_digest for r in first.layers]
    row = store.image(resolved.digest, "linux/amd64")
    assert row["index_digest"] == first.index_digest
    assert row["outcome"] == "built"


# ------------------------------------------ 2. cat and ls against tar

def test_every_regular_file_cats_as_gnu_tar_extracts_it(
        image, tmp_path, capsysbinary):
    store_dir = tmp_path / "store"
    paths = sorted(regular_files(image.root))
    # All four layers hold regular files the loop below reads.
    assert {"/etc/hostname", "/data/f0011.bin", "/opt/app/README",
            "/usr/share/doc/notes.txt"} <= set(paths)
    for path in paths:
        code, out, err = run(capsysbinary, "cat", image.ref, path,
                             "--store", store_dir)
        assert code == 0, (path, err)
        with open(os.path.join(image.root, path[1:]), "rb") as f:
            assert out == f.read(), path


def test_the_top_most_layer_s_version_of_a_file_wins(
        image, tmp_path, capsysbinary):
    code, out, err = run(capsysbinary, "cat", image.ref, "/etc/motd",
                         "--store", tmp_path / "store")
    assert code == 0, err
    assert out == b"the new motd\n"
    assert fetched(err)[2] == image.layers[PLAIN][0]


def test_ls_of_every_directory_names_what_tar_extracted(
        image, tmp_path, capsysbinary):
    store_dir = tmp_path / "store"
    dirs = [top for top, _, _ in os.walk(image.root)]
    assert len(dirs) >= 9
    for top in dirs:
        rel = os.path.relpath(top, image.root)
        path = "/" if rel == "." else "/" + rel
        code, out, err = run(capsysbinary, "ls", image.ref, path,
                             "--store", store_dir)
        assert code == 0, (path, err)
        assert ls_names(out) == sorted(os.listdir(top)), path


def test_ls_marks_directories_symlinks_and_file_sizes(
        image, tmp_path, capsysbinary):
    store_dir = tmp_path / "store"
    code, out, err = run(capsysbinary, "ls", image.ref, "/opt/app/lib",
                         "--store", store_dir)
    assert code == 0, err
    lines = ls_lines(out)
    assert lines["libfoo.so"][1] == 300 * 1024
    assert lines["libfoo.so"][0].startswith("-")
    assert lines["libfoo.so.1"][0].startswith("l")
    assert lines["libfoo.so.1"][2] == " -> libfoo.so"
    code, out, err = run(capsysbinary, "ls", image.ref, "/",
                         "--store", store_dir)
    assert code == 0, err
    assert "etc/" in out.decode().split()
    assert ls_lines(out)["etc/"][0].startswith("d")


# ------------------------------------------------------ 3. whiteouts

@pytest.fixture
def whiteout_image(registries, repo):
    """/a/.wh.x hides /a/x; /b/.wh..wh..opq hides all of the lower /b."""
    lower = small_layer([
        Entry("a", type="dir", mode=0o755),
        Entry("a/x", b"x\n"), Entry("a/y", b"y\n"),
        Entry("b", type="dir", mode=0o755),
        Entry("b/z", b"z\n"),
    ])
    upper = small_layer([
        Entry("a/.wh.x"),
        Entry("b", type="dir", mode=0o755),
        Entry("b/.wh..wh..opq"),
        Entry("b/new", b"new\n"),
    ])
    testimages.push_image(registries.plain, repo, "wh", [lower, upper])
    return "%s/%s:wh" % (registries.plain, repo)


@pytest.mark.parametrize("path, names", [
    ("/", ["a", "b"]), ("/a", ["y"]), ("/b", ["new"])])
def test_whiteouts_hide_lower_files_from_ls(
        whiteout_image, tmp_path, capsysbinary, path, names):
    code, out, err = run(capsysbinary, "ls", whiteout_image, path,
                         "--store", tmp_path / "store")
    assert code == 0, err
    assert ls_names(out) == names


@pytest.mark.parametrize("path", ["/a/x", "/b/z"])
def test_cat_of_a_whited_out_file_fails(
        whiteout_image, tmp_path, capsysbinary, path):
    code, out, err = run(capsysbinary, "cat", whiteout_image, path,
                         "--store", tmp_path / "store")
    assert code == 1
    assert out == b""
    assert_one_error_line(err, path)


def test_files_beside_whiteouts_still_cat(
        whiteout_image, tmp_path, capsysbinary):
    store_dir = tmp_path / "store"
    for path, data in [("/a/y", b"y\n"), ("/b/new", b"new\n")]:
        code, out, err = run(capsysbinary, "cat", whiteout_image, path,
                             "--store", store_dir)
        assert code == 0, err
        assert out == data


# ----------------------------------------------- 4. links through cat

@pytest.mark.parametrize("link, target", [
    ("/etc/issue", "etc/motd"),                 # absolute, across layers
    ("/opt/app/lib/libfoo.so.1", "opt/app/lib/libfoo.so"),   # relative
    ("/opt/app/bin/run", "opt/app/lib/libfoo.so"),   # relative with ..
    ("/opt/app/hard", "opt/app/README"),        # hardlink, same layer
])
def test_cat_follows_symlinks_and_hardlinks(
        image, tmp_path, capsysbinary, link, target):
    code, out, err = run(capsysbinary, "cat", image.ref, link,
                         "--store", tmp_path / "store")
    assert code == 0, err
    with open(os.path.join(image.root, target), "rb") as f:
        assert out == f.read()
    assert out


def test_the_pigz_layer_really_holds_a_hardlink_and_symlinks(image):
    ztoc = soci.build_ztoc(io.BytesIO(image.blobs[PIGZ]), "gzip")
    kinds = {soci.clean_path(e.name): e.type for e in ztoc.entries}
    assert kinds["opt/app/hard"] == "hardlink"
    assert kinds["opt/app/bin/run"] == "symlink"
    assert kinds["opt/app/lib/libfoo.so.1"] == "symlink"


# ------------------------------------------- 5. only the needed spans

def test_cat_fetches_only_the_spans_that_hold_the_file(
        image, tmp_path, capsysbinary):
    code, out, err = run(capsysbinary, "cat", image.ref, "/data/f0005.bin",
                         "--store", tmp_path / "store",
                         "--span-size", 1048576)
    assert code == 0, err
    with open(os.path.join(image.root, "data/f0005.bin"), "rb") as f:
        assert out == f.read()
    got, total, layer = fetched(err)
    assert (layer, total) == image.layers[BIG][:2]
    # 1 MiB of the file is random, so at least that much was fetched.
    assert MiB <= got < 0.3 * total


# ---------------------------------------------------------- 6. auth

@pytest.fixture
def auth_image(registries, repo):
    """A small image, pushed once; every registry shares the storage."""
    push_small_image(registries.plain, repo, HELLO)
    return repo


def test_auth_registry_builds_and_cats_with_an_auth_file(
        registries, auth_image, tmp_path, capsysbinary):
    ref = "%s/%s:v1" % (registries.auth, auth_image)
    auth = write_auth_file(tmp_path / "config.json", registries.auth,
                           registries.user, registries.password)
    store_dir = tmp_path / "store"
    code, out, err = run(capsysbinary, "build", ref, "--store", store_dir,
                         "--auth-file", auth, "--min-layer-size", 1)
    assert code == 0, err
    assert DIGEST_RE.match(last_line(out))
    code, out, err = run(capsysbinary, "cat", ref, "/etc/hello",
                         "--store", store_dir, "--auth-file", auth)
    assert code == 0, err
    assert out == b"hello, world\n"


def test_auth_registry_without_credentials_fails_in_one_line(
        registries, auth_image, tmp_path, capsysbinary, monkeypatch):
    monkeypatch.delenv("HERMES_AUTH_FILE", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker"))
    ref = "%s/%s:v1" % (registries.auth, auth_image)
    code, out, err = run(capsysbinary, "build", ref,
                         "--store", tmp_path / "store")
    assert code == 1
    assert out == b""
    assert_one_error_line(err, registries.auth, "401")


def test_auth_registry_with_a_wrong_password_fails_in_one_line(
        registries, auth_image, tmp_path, capsysbinary):
    ref = "%s/%s:v1" % (registries.auth, auth_image)
    auth = write_auth_file(tmp_path / "config.json", registries.auth,
                           registries.user, "not-the-password")
    code, out, err = run(capsysbinary, "cat", ref, "/etc/hello",
                         "--store", tmp_path / "store", "--auth-file", auth)
    assert code == 1
    assert out == b""
    assert_one_error_line(err, registries.auth, "401")


def test_tls_registry_works_with_the_ca_file(
        registries, auth_image, tmp_path, capsysbinary):
    ref = "%s/%s:v1" % (registries.tls, auth_image)
    auth = write_auth_file(tmp_path / "config.json", registries.tls,
                           registries.user, registries.password)
    code, out, err = run(capsysbinary, "cat", ref, "/etc/hello",
                         "--store", tmp_path / "store", "--auth-file", auth,
                         "--ca-file", registries.ca)
    assert code == 0, err
    assert out == b"hello, world\n"


def test_tls_registry_without_the_ca_file_is_not_trusted(
        registries, auth_image, tmp_path, capsysbinary, monkeypatch):
    monkeypatch.delenv("HERMES_CA_FILE", raising=False)
    ref = "%s/%s:v1" % (registries.tls, auth_image)
    auth = write_auth_file(tmp_path / "config.json", registries.tls,
                           registries.user, registries.password)
    code, out, err = run(capsysbinary, "cat", ref, "/etc/hello",
                         "--store", tmp_path / "store", "--auth-file", auth)
    assert code == 1
    assert out == b""
    assert_one_error_line(err, registries.tls, "certificate")


# ------------------------------------------------------- 7. platform

@pytest.fixture
def multi_arch(registries, repo):
    """An OCI index with linux/amd64 and linux/arm64 manifests."""
    pushed = testimages.push_image(
        registries.plain, repo, "multi", [small_layer(HELLO)], index=True)
    return types.SimpleNamespace(
        ref="%s/%s:multi" % (registries.plain, repo), pushed=pushed)


def build_for(cap, ref, store_dir, platform):
    code, out, err = run(cap, "build", ref, "--store", store_dir,
                         "--platform", platform, "--index-version", 1,
                         "--min-layer-size", 1)
    assert code == 0, err
    return last_line(out)


def test_each_platform_of_an_index_gets_its_own_index(
        multi_arch, tmp_path, capsysbinary):
    store_dir = tmp_path / "store"
    amd64 = build_for(capsysbinary, multi_arch.ref, store_dir,
                      "linux/amd64")
    arm64 = build_for(capsysbinary, multi_arch.ref, store_dir,
                      "linux/arm64")
    assert amd64 != arm64
    amd64_subject = index_of(store_dir, amd64)["subject"]["digest"]
    arm64_subject = index_of(store_dir, arm64)["subject"]["digest"]
    assert amd64_subject == multi_arch.pushed["manifest_digest"]
    assert arm64_subject not in (amd64_subject,
                                 multi_arch.pushed["index_digest"])
    rows = {(r["platform"], r["manifest_digest"]): r["index_digest"]
            for r in store_mod.Store(store_dir).images()}
    assert rows == {("linux/amd64", amd64_subject): amd64,
                    ("linux/arm64", arm64_subject): arm64}


def test_inspect_json_reports_the_platform_s_manifest(
        multi_arch, tmp_path, capsysbinary):
    store_dir = tmp_path / "store"
    digest = build_for(capsysbinary, multi_arch.ref, store_dir,
                       "linux/arm64")
    code, out, err = run(capsysbinary, "inspect", multi_arch.ref, "--json",
                         "--store", store_dir, "--platform", "linux/arm64")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["platform"] == "linux/arm64"
    assert summary["index"] == digest
    assert summary["index_version"] == 1
    assert summary["manifest"] != multi_arch.pushed["manifest_digest"]
    assert len(summary["ztocs"]) == summary["image_layers"] == 1


def test_a_platform_the_index_lacks_fails_naming_it(
        multi_arch, tmp_path, capsysbinary):
    code, out, err = run(capsysbinary, "build", multi_arch.ref,
                         "--store", tmp_path / "store",
                         "--platform", "linux/s390x")
    assert code == 1
    assert out == b""
    assert_one_error_line(err, "linux/s390x")


# ---------------------------------------------------------- 8. errors

def test_an_unknown_repository_fails_in_one_line(
        registries, tmp_path, capsysbinary):
    ref = "%s/test-hermes-py/no-such-repo:v1" % registries.plain
    code, out, err = run(capsysbinary, "build", ref,
                         "--store", tmp_path / "store")
    assert code == 1
    assert out == b""
    assert_one_error_line(err, "no-such-repo", "404")


def test_an_unknown_tag_fails_in_one_line(
        image, tmp_path, capsysbinary):
    ref = "%s/%s:no-such-tag" % (image.host, image.repo)
    code, out, err = run(capsysbinary, "ls", ref,
                         "--store", tmp_path / "store")
    assert code == 1
    assert out == b""
    assert_one_error_line(err, "no-such-tag", "404")


@pytest.mark.parametrize("command, path", [
    ("cat", "/etc/no-such-file"),
    ("cat", "/no-such-dir/file"),
    ("cat", "/etc/hostname/below-a-file"),
    ("ls", "/no-such-dir"),
])
def test_a_path_the_image_lacks_fails_in_one_line(
        image, tmp_path, capsysbinary, command, path):
    code, out, err = run(capsysbinary, command, image.ref, path,
                         "--store", tmp_path / "store")
    assert code == 1
    assert out == b""
    assert_one_error_line(err, path)


def test_cat_of_a_directory_fails_in_one_line(
        image, tmp_path, capsysbinary):
    code, out, err = run(capsysbinary, "cat", image.ref, "/etc",
                         "--store", tmp_path / "store")
    assert code == 1
    assert out == b""
    assert_one_error_line(err, "/etc", "not a regular file")


@pytest.mark.parametrize("args", [
    [],
    ["build"],
    ["frobnicate", "x"],
    ["build", "example.com/a:b", "--span-size", "0"],
    ["build", "example.com/a:b", "--span-size", "lots"],
    ["build", "example.com/a:b", "--index-version", "3"],
    ["cat", "example.com/a:b"],
])
def test_usage_errors_exit_2(capsysbinary, args):
    code, out, err = run(capsysbinary, *args)
    assert code == 2
    assert out == b""
    assert "usage: hermes" in err


def test_ztoc_output_is_inspected_as_spans_and_entries(
        image, tmp_path, capsysbinary):
    layer = tmp_path / "big.tar.gz"
    layer.write_bytes(image.blobs[BIG])
    out_file = tmp_path / "big.ztoc"
    code, out, err = run(capsysbinary, "ztoc", layer, "-o", out_file,
                         "--span-size", MiB)
    assert code == 0, err
    assert last_line(out) == sha256(out_file.read_bytes())

    code, out, err = run(capsysbinary, "inspect", out_file)
    assert code == 0, err
    fields = dict(line.split(": ", 1)
                  for line in out.decode().splitlines() if ": " in line)
    spans, entries = int(fields["spans"]), int(fields["entries"])
    # 24 MiB of tar, spans of at least 1 MiB (a block of zeros can
    # inflate to several MiB, so fewer than 24); data/ and 12 files.
    assert 12 <= spans <= 25
    assert spans == soci.build_ztoc(
        io.BytesIO(image.blobs[BIG]), "gzip", MiB).span_count
    assert entries == 13

    code, out, err = run(capsysbinary, "inspect", out_file, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["spans"] == spans
    assert summary["entries"] == entries
    assert summary["compression"] == "gzip"
    assert summary["span_size"] == MiB
    assert summary["compressed_size"] == len(image.blobs[BIG])
    assert summary["entry_types"] == {"dir": 1, "reg": 12}


def test_ztoc_without_output_file_puts_it_in_the_store(
        image, tmp_path, capsysbinary):
    layer = tmp_path / "plain.tar"
    layer.write_bytes(image.blobs[PLAIN])
    store_dir = tmp_path / "store"
    code, out, err = run(capsysbinary, "ztoc", layer, "--store", store_dir)
    assert code == 0, err
    digest = last_line(out)
    ztoc = soci.Ztoc.from_bytes(read_blob(store_dir, digest))
    assert ztoc.compression == "uncompressed"
    assert ztoc.compressed_size == len(image.blobs[PLAIN])


def test_inspect_of_an_image_not_built_says_to_build_it(
        image, tmp_path, capsysbinary):
    code, out, err = run(capsysbinary, "inspect", image.ref,
                         "--store", tmp_path / "store")
    assert code == 1
    assert_one_error_line(err, "hermes build")


def test_the_command_line_separates_output_errors_and_exit_codes(
        image, tmp_path):
    store_dir = str(tmp_path / "store")

    def hermes_process(*args):
        return subprocess.run(
            [sys.executable, os.path.join(HERE, "hermes.py"), *args],
            cwd=tmp_path, capture_output=True, timeout=300)

    done = hermes_process("cat", image.ref, "/opt/app/lib/libfoo.so",
                          "--store", store_dir)
    assert done.returncode == 0, done.stderr
    with open(os.path.join(image.root, "opt/app/lib/libfoo.so"), "rb") as f:
        assert done.stdout == f.read()
    err = done.stderr.decode().splitlines()
    assert len(err) == 1
    assert fetched(err[0])[2] == image.layers[PIGZ][0]

    done = hermes_process("cat", image.ref, "/etc/none",
                          "--store", store_dir)
    assert done.returncode == 1
    assert done.stdout == b""
    assert_one_error_line(done.stderr.decode(), "/etc/none")

    done = hermes_process("build", image.ref, "--span-size", "-1")
    assert done.returncode == 2
    assert done.stdout == b""
    assert b"usage: hermes" in done.stderr
    assert not os.path.exists(tmp_path / "hermes-store")


# ------------------------------------------------------- 9. bad input

def test_a_truncated_gzip_layer_fails_the_build_saying_truncated(
        registries, repo, tmp_path, capsysbinary):
    whole = small_layer([Entry("f.bin", testimages.random_bytes(
        200 * 1024, seed=11))])
    push_raw_image(registries.plain, repo, "cut", [whole[:len(whole) // 2]],
                   [testimages.OCI_LAYER_GZIP])
    ref = "%s/%s:cut" % (registries.plain, repo)
    code, out, err = run(capsysbinary, "build", ref,
                         "--store", tmp_path / "store")
    assert code == 1
    assert out == b""
    assert_one_error_line(err, "truncated")


def test_a_layer_entry_escaping_the_root_fails_naming_it(
        registries, repo, tmp_path, capsysbinary):
    ref = push_small_image(registries.plain, repo, [
        Entry("ok", b"fine\n"), Entry("../x", b"escaped\n")])
    code, out, err = run(capsysbinary, "build", ref,
                         "--store", tmp_path / "store")
    assert code == 1
    assert out == b""
    assert_one_error_line(err, "../x")


def store_files(store_dir):
    found = {}
    for top, _, files in os.walk(store_dir):
        for name in files:
            path = os.path.join(top, name)
            found[os.path.relpath(path, store_dir)] = os.path.getsize(path)
    return found


def test_a_corrupt_ztoc_in_the_store_fails_cat_and_deletes_nothing(
        image, tmp_path, capsysbinary):
    store_dir = tmp_path / "store"
    code, out, err = run(capsysbinary, "build", image.ref,
                         "--store", store_dir, "--min-layer-size", 1)
    assert code == 0, err
    ztoc_digest = index_of(store_dir, last_line(out))["layers"][0]["digest"]
    victim = blob_path(store_dir, ztoc_digest)
    with open(victim, "r+b") as f:
        f.write(b"garbage!")
    before = store_files(store_dir)

    code, out, err = run(capsysbinary, "cat", image.ref, "/etc/hostname",
                         "--store", store_dir)
    assert code == 1
    assert out == b""
    assert_one_error_line(err, "corrupt", ztoc_digest)
    assert store_files(store_dir) == before
    with open(victim, "rb") as f:
        assert f.read(8) == b"garbage!"

    # The error says to delete the blob and build again; that works.
    os.unlink(victim)
    code, out, err = run(capsysbinary, "cat", image.ref, "/etc/hostname",
                         "--store", store_dir)
    assert code == 0, err
    assert out == b"hermes\n"
    assert sha256(read_blob(store_dir, ztoc_digest)) == ztoc_digest


def test_a_single_manifest_for_another_platform_is_refused(
        image, tmp_path, capsysbinary):
    code, out, err = run(capsysbinary, "build", image.ref, "--store",
                         tmp_path / "s", "--platform", "linux/s390x")
    assert code == 1
    assert "linux/amd64, not linux/s390x" in err


def test_ztoc_of_a_zstd_blob_says_it_is_not_indexable(
        tmp_path, capsysbinary):
    layer = tmp_path / "layer.tar.zst"
    layer.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(64))
    code, out, err = run(capsysbinary, "ztoc", layer, "-o",
                         tmp_path / "out")
    assert code == 1
    assert "zstd" in err and out == b""
    assert not (tmp_path / "out").exists()


def test_progress_shows_layer_bytes_and_rate_on_a_terminal(capsys):
    progress = hermes._Progress(enabled=True)
    desc = {"digest": "sha256:" + "ab" * 32, "size": 2_000_000}
    progress(0, 3, desc, 1_000_000)
    progress(0, 3, desc, 2_000_000)
    err = capsys.readouterr().err
    assert "layer 1/3 abababababab" in err
    assert "2.0/2.0 MB" in err and "MB/s" in err
    assert err.endswith("\n")
    hermes._Progress(enabled=False)(0, 3, desc, 2_000_000)
    assert capsys.readouterr().err == ""


def test_inspect_says_why_each_layer_is_not_in_the_index(
        image, tmp_path, capsysbinary):
    store_dir = tmp_path / "store"
    code, out, err = run(capsysbinary, "build", image.ref,
                         "--store", store_dir)
    assert code == 0, err
    code, out, err = run(capsysbinary, "inspect", image.ref, "--json",
                         "--store", store_dir)
    assert code == 0, err
    summary = json.loads(out)
    skipped = {s["layer"]: s for s in summary["skipped"]}
    indexed = {z["layer"] for z in summary["ztocs"]}
    assert len(skipped) + len(indexed) == len(image.layers) == 4
    assert indexed == {image.layers[BIG][0]}
    assert all(s["reason"] == "smaller than the minimum layer size"
               for s in skipped.values())
    code, out, err = run(capsysbinary, "inspect", image.ref,
                         "--store", store_dir)
    assert out.decode().count("smaller than the minimum layer size") == 3
