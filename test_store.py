"""Tests of store.py: content-addressed blobs and the build records.

No registry is needed: blobs are plain bytes, and `build_image` reads
its layers through a small in-memory stand-in for `registry.Client`.
"""

import hashlib
import io
import os

import pytest

import registry
import soci
import testimages
from store import Store, StoreError, build_image, image_tree
from testimages import Entry


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def files_under(root):
    return sorted(os.path.relpath(os.path.join(top, name), root)
                  for top, _, names in os.walk(root) for name in names)


# ------------------------------------------------------------- blobs

def test_put_returns_the_digest_and_get_gives_the_bytes_back(tmp_path):
    store = Store(tmp_path / "store")
    digest = store.put(b"some bytes")
    assert digest == sha256(b"some bytes")
    assert store.get(digest) == b"some bytes"
    assert store.has(digest)


def test_blobs_live_under_blobs_sha256_by_hex(tmp_path):
    store = Store(tmp_path / "store")
    digest = store.put(b"where am i")
    path = tmp_path / "store" / "blobs" / "sha256" / digest[7:]
    assert store.path(digest) == str(path)
    assert path.read_bytes() == b"where am i"


def test_putting_the_same_bytes_twice_keeps_one_blob(tmp_path):
    store = Store(tmp_path / "store")
    assert store.put(b"twice") == store.put(b"twice")
    assert len(os.listdir(store.blobs)) == 1


def test_put_leaves_no_temporary_files(tmp_path):
    store = Store(tmp_path / "store")
    digests = [store.put(b"blob %d" % i) for i in range(5)]
    store.put(b"")
    assert sorted(os.listdir(store.blobs)) == sorted(
        [d[7:] for d in digests] + [sha256(b"")[7:]])


def test_a_failed_put_leaves_no_temporary_file(tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    store.put(b"first")

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        store.put(b"second")
    assert os.listdir(store.blobs) == [sha256(b"first")[7:]]
    assert not store.has(sha256(b"second"))


def test_get_of_a_tampered_blob_raises_and_keeps_the_file(tmp_path):
    store = Store(tmp_path / "store")
    digest = store.put(b"original")
    with open(store.path(digest), "wb") as f:
        f.write(b"tampered")
    with pytest.raises(StoreError, match="corrupt"):
        store.get(digest)
    with open(store.path(digest), "rb") as f:
        assert f.read() == b"tampered"


def test_get_of_a_truncated_blob_raises(tmp_path):
    store = Store(tmp_path / "store")
    digest = store.put(b"0123456789")
    os.truncate(store.path(digest), 5)
    with pytest.raises(StoreError, match=digest):
        store.get(digest)


def test_get_of_a_missing_digest_raises(tmp_path):
    store = Store(tmp_path / "store")
    store.put(b"something else")
    missing = sha256(b"never stored")
    assert not store.has(missing)
    with pytest.raises(StoreError, match="not in the store"):
        store.get(missing)


@pytest.mark.parametrize("bad", [
    "",
    "sha256:",
    "sha256:abc",
    "sha512:" + "0" * 64,
    "sha256:" + "A" * 64,
    "sha256:" + "g" * 64,
    "sha256:" + "0" * 63,
    "sha256:" + "0" * 65,
    "0" * 64,
    "sha256:../../" + "0" * 58,
    "sha256:" + "0" * 62 + "/x",
])
def test_malformed_digests_are_refused(tmp_path, bad):
    store = Store(tmp_path / "store")
    for call in (store.get, store.has, store.path):
        with pytest.raises(StoreError, match="not a sha256 digest"):
            call(bad)


def test_a_new_store_object_sees_the_blobs_of_the_old(tmp_path):
    digest = Store(tmp_path / "store").put(b"persistent")
    assert Store(tmp_path / "store").get(digest) == b"persistent"


# ----------------------------------------------------------- records

ZTOC = "sha256:" + "1" * 64
LAYER = "sha256:" + "2" * 64
MANIFEST = "sha256:" + "3" * 64
INDEX = "sha256:" + "4" * 64


def test_layer_records_survive_a_new_store_object(tmp_path):
    store = Store(tmp_path / "store")
    ztoc = store.put(b"a ztoc")
    store.record_layer(LAYER, 4096, ztoc, "built")
    store.record_layer(LAYER, 8192, None, "unsupported", "zstd")

    again = Store(tmp_path / "store")
    row = again.layer(LAYER, 4096)
    assert (row["ztoc_digest"], row["outcome"], row["error"]) == \
        (ztoc, "built", None)
    row = again.layer(LAYER, 8192)
    assert (row["ztoc_digest"], row["outcome"], row["error"]) == \
        (None, "unsupported", "zstd")
    assert again.layer(LAYER, 1024) is None
    assert again.layer(ZTOC, 4096) is None


def test_a_layer_whose_ztoc_blob_is_gone_counts_as_not_built(tmp_path):
    store = Store(tmp_path / "store")
    store.record_layer(LAYER, 4096, ZTOC, "built")
    assert store.layer(LAYER, 4096) is None


def test_recording_a_layer_again_replaces_the_record(tmp_path):
    store = Store(tmp_path / "store")
    first, second = store.put(b"first"), store.put(b"second")
    store.record_layer(LAYER, 4096, first, "built")
    store.record_layer(LAYER, 4096, second, "built")
    assert Store(tmp_path / "store").layer(LAYER, 4096)["ztoc_digest"] \
        == second


def test_image_records_survive_a_new_store_object(tmp_path):
    store = Store(tmp_path / "store")
    store.record_image(MANIFEST, "linux/amd64", "r/a:1", INDEX, "built")
    store.record_image(MANIFEST, "linux/arm64", "r/a:1", None, "failed",
                       "boom")

    again = Store(tmp_path / "store")
    row = again.image(MANIFEST, "linux/amd64")
    assert (row["reference"], row["index_digest"], row["outcome"]) == \
        ("r/a:1", INDEX, "built")
    row = again.image(MANIFEST, "linux/arm64")
    assert (row["index_digest"], row["outcome"], row["error"]) == \
        (None, "failed", "boom")
    assert again.image(MANIFEST, "linux/s390x") is None
    assert [(r["platform"], r["outcome"]) for r in again.images()] == \
        [("linux/amd64", "built"), ("linux/arm64", "failed")]


def test_the_store_keeps_only_blobs_and_its_database(tmp_path):
    store = Store(tmp_path / "store")
    digest = store.put(b"x")
    store.record_layer(LAYER, 1, digest, "built")
    assert files_under(tmp_path / "store") == [
        os.path.join("blobs", "sha256", digest[7:]), "hermes.db"]


# ---------------------------------------------------------- building

class FakeClient:
    """Serves layer blobs from memory and counts what it opened."""

    def __init__(self, blobs):
        self.blobs = {sha256(b): b for b in blobs}
        self.opened = []

    def open_blob(self, ref, digest):
        self.opened.append(digest)
        return io.BytesIO(self.blobs[digest])


def fake_image(blobs, media_types):
    layers = [{"mediaType": mt, "digest": sha256(b), "size": len(b)}
              for b, mt in zip(blobs, media_types)]
    data = b'{"fake": "manifest"}'
    return registry.Image(
        ref=registry.parse_reference("example.com/fake:v1"),
        digest=sha256(data), media_type=testimages.OCI_MANIFEST,
        data=data, manifest={}, config={}, layers=layers,
        platform="linux/amd64")


def two_layers():
    lower = testimages.gzip_layer(testimages.tar_layer([
        Entry("etc", type="dir", mode=0o755),
        Entry("etc/motd", b"lower\n"),
        Entry("etc/gone", b"gone\n"),
    ]))
    upper = testimages.tar_layer([
        Entry("etc/motd", b"upper\n"),
        Entry("etc/.wh.gone"),
    ])
    return [lower, upper], [testimages.OCI_LAYER_GZIP, testimages.OCI_LAYER]


def test_build_image_reads_each_layer_once_then_uses_the_store(tmp_path):
    blobs, media = two_layers()
    client, image = FakeClient(blobs), fake_image(blobs, media)
    store = Store(tmp_path / "store")
    first = build_image(client, store, image, min_layer_size=1)
    assert [r.outcome for r in first.layers] == ["built", "built"]
    assert client.opened == [sha256(b) for b in blobs]

    second = build_image(client, Store(tmp_path / "store"), image,
                         min_layer_size=1)
    assert [r.outcome for r in second.layers] == ["cached", "cached"]
    assert second.index_digest == first.index_digest
    assert len(client.opened) == 2


def test_build_image_leaves_small_layers_out_of_the_index(tmp_path):
    blobs, media = two_layers()
    image = fake_image(blobs, media)
    store = Store(tmp_path / "store")
    threshold = len(blobs[1])   # the uncompressed layer is the larger
    assert len(blobs[0]) < threshold
    result = build_image(FakeClient(blobs), store, image,
                         min_layer_size=threshold)
    index = soci.parse_index(store.get(result.index_digest))
    assert [d["annotations"][soci.ANN_LAYER_DIGEST]
            for d in index["layers"]] == [sha256(blobs[1])]
    # Both layers got a ztoc all the same, for ls and cat.
    assert all(store.has(r.ztoc_digest) for r in result.layers)


def test_build_image_with_no_layer_big_enough_records_empty(tmp_path):
    blobs, media = two_layers()
    image = fake_image(blobs, media)
    store = Store(tmp_path / "store")
    result = build_image(FakeClient(blobs), store, image)
    assert result.index_digest is None
    row = store.image(image.digest, "linux/amd64")
    assert (row["outcome"], row["index_digest"]) == ("empty", None)


def test_build_image_records_a_failed_build(tmp_path):
    bad = testimages.tar_layer([Entry("../x", b"escape\n")])
    image = fake_image([bad], [testimages.OCI_LAYER])
    store = Store(tmp_path / "store")
    with pytest.raises(soci.LayerError, match=r"\.\./x"):
        build_image(FakeClient([bad]), store, image, min_layer_size=1)
    row = store.image(image.digest, "linux/amd64")
    assert row["outcome"] == "failed"
    assert "../x" in row["error"]


def test_image_tree_merges_the_layers_with_whiteouts(tmp_path):
    blobs, media = two_layers()
    image = fake_image(blobs, media)
    store = Store(tmp_path / "store")
    build_image(FakeClient(blobs), store, image, min_layer_size=1)
    tree, ztocs = image_tree(store, image)
    assert set(ztocs) == {sha256(b) for b in blobs}
    assert [name for name, _, _ in tree.listdir("/etc")] == ["motd"]
    layer, entry = tree.resolve("/etc/motd")
    assert layer == sha256(blobs[1])
    data = soci.SpanReader(
        ztocs[layer],
        lambda off, n: blobs[1][off:off + n]).read(entry.offset, entry.size)
    assert data == b"upper\n"


def test_image_tree_of_an_unbuilt_image_raises(tmp_path):
    blobs, media = two_layers()
    with pytest.raises(StoreError, match="not built yet"):
        image_tree(Store(tmp_path / "store"), fake_image(blobs, media))
