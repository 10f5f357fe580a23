"""Tests for soci.py: ztoc bytes, TOC semantics, span reads, bad input."""

import hashlib
import io
import json
import os
import random
import struct
import subprocess
import tarfile
import zlib

import pytest

import soci
from testimages import (Entry, big_layer_files, gnu_tar_layer, gzip_layer,
                        pigz_layer, random_bytes, tar_layer)

SMALL_SPAN = 64 << 10


def build(blob, compression="gzip", span=SMALL_SPAN):
    return soci.build_ztoc(io.BytesIO(blob), compression, span)


def reader(ztoc, blob):
    return soci.SpanReader(ztoc, lambda off, n: blob[off:off + n])


def mixed_entries():
    return [
        Entry("etc/", type="dir", mode=0o755),
        Entry("etc/hosts", b"127.0.0.1 localhost\n"),
        Entry("etc/link", type="symlink", linkname="hosts"),
        Entry("etc/hard", type="hardlink", linkname="etc/hosts"),
        Entry("dev/null", type="char", devmajor=1, devminor=3),
        Entry("dev/sda", type="block", devmajor=8, devminor=0),
        Entry("run/pipe", type="fifo"),
        Entry("empty", b""),
        Entry("x" * 120 + "/long-name", b"long"),
        Entry("attr", b"v", pax={"SCHILY.xattr.user.k": "val",
                                "LIBARCHIVE.creationtime": "1"}),
        Entry("frac", b"t", mtime=1700000000.25),
    ] + [Entry("data/%02d" % i, random_bytes(150_000, i) + bytes(150_000))
         for i in range(8)]


def files_of(tar_bytes):
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return {m.name: tar.extractfile(m).read()
                for m in tar.getmembers() if m.isfile()}


def assert_every_file_reads_back(ztoc, blob, tar_bytes):
    expected = files_of(tar_bytes)
    spans = reader(ztoc, blob)
    regular = [e for e in ztoc.entries if e.type == "reg"]
    assert len(regular) == len(expected)
    for e in regular:
        assert spans.read(e.offset, e.size) == expected[e.name], e.name


# ------------------------------------------------- byte compatibility

def test_ztoc_bytes_match_soci_snapshotters_known_answer():
    # TestWriteZtoc in soci-snapshotter's ztoc/ztoc_test.go.
    ztoc = soci.Ztoc(
        version="0.9", build_tool="AWS SOCI CLI",
        compressed_size=2000000, uncompressed_size=2500000,
        entries=[soci.TocEntry(), soci.TocEntry()], compression="gzip",
        span_digests=[], checkpoints=bytes(1 << 16), max_span_id=3)
    data = ztoc.to_bytes()
    assert hashlib.sha256(data).hexdigest() == (
        "eba28fdf50b1b57543f57dd051b2468c1d4f57b64d2006c75aa4de1d03e6c7ec")
    assert len(data) == 65928


def test_tar_zinfo_is_the_48_byte_flatbuffer():
    blob = soci._tar_zinfo(4194304, 10485760)
    assert len(blob) == 48
    fb = soci._FlatBuffer(blob)
    root = fb.root()
    assert fb.scalar(root, 0, "<i", 0) == 2
    assert fb.scalar(root, 1, "<q", 0) == 4194304
    assert fb.scalar(root, 2, "<q", 0) == 10485760


def test_building_twice_gives_identical_bytes():
    blob = gzip_layer(tar_layer(mixed_entries()))
    assert build(blob).to_bytes() == build(blob).to_bytes()


def test_parsed_ztoc_writes_back_the_same_bytes():
    blob = gzip_layer(tar_layer(mixed_entries()))
    data = build(blob).to_bytes()
    again = soci.Ztoc.from_bytes(data)
    assert again.to_bytes() == data
    assert again.entries == build(blob).entries


def test_gzip_checkpoint_blob_layout():
    blob = gzip_layer(tar_layer(mixed_entries()), filename="layer.tar")
    ztoc = build(blob)
    count, span = struct.unpack_from("<iq", ztoc.checkpoints)
    assert span == SMALL_SPAN
    assert count == ztoc.span_count > 5
    assert len(ztoc.checkpoints) == 12 + 32785 * count
    first_in, first_out, bits = struct.unpack_from("<qqB", ztoc.checkpoints,
                                                   12)
    # The first point follows the gzip header: 10 bytes plus FNAME.
    assert (first_in, first_out, bits) == (10 + len("layer.tar") + 1, 0, 0)
    assert ztoc.window(0) == bytes(32768)


def test_span_digests_hash_the_compressed_bytes_of_each_span():
    blob = gzip_layer(tar_layer(mixed_entries()))
    ztoc = build(blob)
    for k in range(ztoc.span_count):
        start, end = ztoc.span_bounds(k)[:2]
        digest = "sha256:" + hashlib.sha256(blob[start:end]).hexdigest()
        assert digest == ztoc.span_digests[k]
    assert ztoc.span_bounds(ztoc.max_span_id)[1] == len(blob)
    assert ztoc.compressed_size == len(blob)


def test_checkpoints_are_at_least_a_span_apart():
    ztoc = build(gzip_layer(tar_layer(mixed_entries())))
    outs = [p[1] for p in ztoc._gzip_points()]
    assert outs[0] == 0
    assert all(b - a > SMALL_SPAN for a, b in zip(outs, outs[1:]))


# ----------------------------------------------------- TOC semantics

def test_toc_keeps_names_and_fields_as_gos_tar_reader_reports_them():
    tar_bytes = tar_layer(mixed_entries())
    ztoc = build(gzip_layer(tar_bytes))
    by_name = {e.name: e for e in ztoc.entries}
    assert "etc/" in by_name and by_name["etc/"].type == "dir"
    assert by_name["etc/link"].linkname == "hosts"
    assert by_name["etc/hard"].type == "hardlink"
    assert (by_name["dev/null"].devmajor, by_name["dev/null"].devminor) \
        == (1, 3)
    assert by_name["dev/sda"].type == "block"
    assert by_name["run/pipe"].type == "fifo"
    assert "x" * 120 + "/long-name" in by_name
    assert by_name["etc/hosts"].mod_time == "2023-11-14T22:13:20Z"
    assert by_name["frac"].mod_time == "2023-11-14T22:13:20.25Z"
    assert by_name["etc/hosts"].mode == 0o644


def test_pax_records_are_kept_sorted_as_xattrs():
    ztoc = build(gzip_layer(tar_layer(mixed_entries())))
    attr = next(e for e in ztoc.entries if e.name == "attr")
    keys = [k for k, _ in attr.xattrs]
    assert keys == sorted(keys)
    assert ("SCHILY.xattr.user.k", "val") in attr.xattrs
    assert ("LIBARCHIVE.creationtime", "1") in attr.xattrs


def test_entry_offsets_point_just_past_their_headers():
    tar_bytes = tar_layer(mixed_entries(), fmt="ustar")
    ztoc = build(gzip_layer(tar_bytes))
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = tar.getmembers()
    assert [e.offset for e in ztoc.entries] == [m.offset_data
                                                for m in members]


def test_uncompressed_size_ends_after_the_two_zero_blocks():
    tar_bytes = tar_layer([Entry("a", b"x" * 600), Entry("b", b"y")])
    ztoc = build(gzip_layer(tar_bytes))
    # a: header + 1024 data; b: header + 512 data; then 1024 zeros.
    assert ztoc.uncompressed_size == 512 + 1024 + 512 + 512 + 1024
    assert len(tar_bytes) == 10240


def test_gnu_tar_with_dot_slash_names_hardlinks_and_pax(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "file").write_bytes(random_bytes(300_000, 7))
    os.link(root / "sub" / "file", root / "sub" / "hard")
    (root / "sub" / "sym").symlink_to("file")
    (root / ("n" * 200)).write_bytes(b"long")
    for fmt in ("pax", "gnu"):
        tar_bytes = gnu_tar_layer(str(root), fmt=fmt)
        blob = pigz_layer(tar_bytes, 32)
        ztoc = build(blob)
        names = [e.name for e in ztoc.entries]
        assert "./" in names and "./sub/" in names
        assert "./" + "n" * 200 in names
        assert_every_file_reads_back(ztoc, blob, tar_bytes)


def test_directories_keep_their_trailing_slash():
    ztoc = build(gzip_layer(tar_layer([Entry("d", type="dir")])))
    assert [e.name for e in ztoc.entries] == ["d/"]


# ------------------------------------------------------ reading back

@pytest.mark.parametrize("compress", [
    lambda t: gzip_layer(t),
    lambda t: gzip_layer(t, level=1),
    lambda t: gzip_layer(t, level=0),
    lambda t: gzip_layer(t, level=9, filename="l.tar", comment="hi",
                         extra=b"e" * 65000),
    lambda t: pigz_layer(t, 32),
], ids=["gzip6", "gzip1", "stored", "header-fields", "pigz"])
def test_every_file_reads_back_through_the_spans(compress):
    tar_bytes = tar_layer(mixed_entries())
    blob = compress(tar_bytes)
    ztoc = soci.Ztoc.from_bytes(build(blob).to_bytes())
    assert ztoc.span_count > 3
    assert_every_file_reads_back(ztoc, blob, tar_bytes)


def test_uncompressed_tar_layers_read_back_by_slicing():
    tar_bytes = tar_layer(mixed_entries())
    ztoc = build(tar_bytes, "uncompressed")
    assert ztoc.compression == "uncompressed"
    assert ztoc.span_count == -(-len(tar_bytes) // SMALL_SPAN)
    assert soci.Ztoc.from_bytes(ztoc.to_bytes()).compression \
        == "uncompressed"
    assert_every_file_reads_back(ztoc, tar_bytes, tar_bytes)


def test_spans_across_gzip_member_boundaries_read_back():
    tar_bytes = tar_layer(mixed_entries())
    half = len(tar_bytes) // 2
    blob = gzip_layer(tar_bytes[:half]) + gzip_layer(tar_bytes[half:])
    ztoc = build(blob, span=256 << 10)
    assert reader(ztoc, blob).read(0, ztoc.uncompressed_size) \
        == tar_bytes[:ztoc.uncompressed_size]


def test_a_file_read_fetches_only_the_spans_that_hold_it():
    tar_bytes = tar_layer(big_layer_files(8))
    blob = gzip_layer(tar_bytes)
    ztoc = build(blob, span=1 << 20)
    entry = next(e for e in ztoc.entries if e.type == "reg")
    spans = reader(ztoc, blob)
    assert spans.read(entry.offset, entry.size) == files_of(
        tar_bytes)[entry.name]
    assert 0 < spans.fetched < len(blob) // 3


def test_a_legacy_v1_checkpoint_blob_still_reads():
    tar_bytes = tar_layer(mixed_entries())
    blob = gzip_layer(tar_bytes)
    ztoc = build(blob)
    # v1 blobs leave out the first point, which is then {10, 0, 0}.
    ztoc.checkpoints = (ztoc.checkpoints[:12]
                        + ztoc.checkpoints[12 + 32785:])
    ztoc._points = None
    again = soci.Ztoc.from_bytes(ztoc.to_bytes())
    assert_every_file_reads_back(again, blob, tar_bytes)


# --------------------------------------------------------- bad input

def test_a_truncated_gzip_layer_is_refused():
    blob = gzip_layer(tar_layer(mixed_entries()))
    with pytest.raises(soci.LayerError, match="truncated"):
        build(blob[:len(blob) // 2])


def test_a_corrupt_gzip_layer_is_refused():
    blob = bytearray(gzip_layer(tar_layer(mixed_entries())))
    for i in range(len(blob) // 2, len(blob) // 2 + 64):
        blob[i] ^= 0x55
    with pytest.raises(soci.LayerError):
        build(bytes(blob))


def test_a_flipped_byte_in_file_data_fails_the_gzip_check():
    blob = bytearray(gzip_layer(tar_layer(mixed_entries()), level=0))
    # Level 0 stores data verbatim, so this flip keeps the tar valid.
    at = bytes(blob).find(random_bytes(150_000, 3)[1000:1032])
    assert at > 0
    blob[at] ^= 1
    with pytest.raises(soci.LayerError, match="corrupt gzip.*check"):
        build(bytes(blob))


def test_a_truncated_tar_is_refused():
    tar_bytes = tar_layer([Entry("f", b"z" * 5000)])
    with pytest.raises(soci.LayerError, match="truncated"):
        build(gzip_layer(tar_bytes[:2048]))


@pytest.mark.parametrize("name", ["../x", "/x", "a/../../x"])
def test_entries_escaping_the_root_are_refused(name):
    info = tarfile.TarInfo(name)
    info.size = 1
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(soci.LayerError, match="escapes"):
        build(gzip_layer(buf.getvalue()))


def test_an_oversized_pax_header_is_refused():
    tar_bytes = tar_layer([Entry("f", b"x", pax={"comment": "c" * (2 << 20)})])
    with pytest.raises(soci.LayerError, match="1 MiB"):
        build(gzip_layer(tar_bytes))


def test_a_bad_header_checksum_is_refused():
    tar_bytes = bytearray(tar_layer([Entry("f", b"x")]))
    tar_bytes[0] ^= 0xFF
    with pytest.raises(soci.LayerError, match="checksum"):
        build(gzip_layer(bytes(tar_bytes)))


def test_zstd_layers_are_reported_not_indexable():
    with pytest.raises(soci.UnsupportedLayer, match="zstd"):
        build(b"\x28\xb5\x2f\xfd" + bytes(100), "zstd")
    assert soci.compression_of(
        "application/vnd.oci.image.layer.v1.tar+zstd") == "zstd"
    assert soci.sniff_compression(b"\x28\xb5\x2f\xfd") == "zstd"


def test_a_zstd_blob_labelled_gzip_is_not_misread():
    with pytest.raises(soci.LayerError, match="not gzip.*zstd"):
        build(b"\x28\xb5\x2f\xfd" + bytes(100), "gzip")


def test_pax_global_headers_and_sparse_files_are_unsupported():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": "global"}) as tar:
        info = tarfile.TarInfo("f")
        tar.addfile(info)
    with pytest.raises(soci.UnsupportedLayer, match="global"):
        build(gzip_layer(buf.getvalue()))
    sparse = tar_layer([Entry("s", b"x", pax={"GNU.sparse.major": "1"})])
    with pytest.raises(soci.UnsupportedLayer, match="sparse"):
        build(gzip_layer(sparse))


def test_a_span_that_does_not_match_its_digest_is_refused():
    blob = gzip_layer(tar_layer(mixed_entries()))
    ztoc = build(blob)
    bad = bytearray(blob)
    start, end = ztoc.span_bounds(2)[:2]
    bad[start + 5] ^= 1
    spans = reader(ztoc, bytes(bad))
    with pytest.raises(soci.SpanError, match="span 2: digest"):
        spans.read_span(2)
    assert spans.read_span(1)


def test_a_short_span_read_is_refused():
    blob = gzip_layer(tar_layer(mixed_entries()))
    ztoc = build(blob)
    spans = soci.SpanReader(ztoc, lambda off, n: blob[off:off + n - 1])
    with pytest.raises(soci.SpanError, match="expected"):
        spans.read_span(0)


def test_garbage_is_not_a_ztoc():
    for data in (b"", b"\0" * 3, b"garbage" * 10, random_bytes(4096, 3)):
        with pytest.raises(soci.FormatError):
            soci.Ztoc.from_bytes(data)


def test_mutated_ztocs_fail_cleanly_never_crash():
    good = build(gzip_layer(tar_layer(mixed_entries()[:4]))).to_bytes()
    rng = random.Random(5)
    for _ in range(300):
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            soci.Ztoc.from_bytes(bytes(data))
        except soci.FormatError:
            pass


def test_a_huge_vector_length_is_refused_without_allocating():
    good = bytearray(build(gzip_layer(tar_layer(
        [Entry("f", b"x")]))).to_bytes())
    fb = soci._FlatBuffer(bytes(good))
    toc = fb.table(fb.root(), 4)
    vector = fb._field(toc, 0)
    start = vector + fb._u32(vector)
    struct.pack_into("<I", good, start, 0x7FFFFFFF)
    with pytest.raises(soci.FormatError):
        soci.Ztoc.from_bytes(bytes(good))


def test_a_hostile_span_size_is_refused():
    blob = gzip_layer(tar_layer([Entry("f", b"x")]))
    ztoc = build(blob)
    ztoc.checkpoints = (ztoc.checkpoints[:4] + struct.pack("<q", 1 << 62)
                        + ztoc.checkpoints[12:])
    with pytest.raises(soci.FormatError, match="span size"):
        soci.Ztoc.from_bytes(ztoc.to_bytes())


def test_a_garbage_tar_zinfo_is_refused():
    ztoc = build(tar_layer([Entry("f", b"x")]), "uncompressed")
    ztoc.checkpoints = b"\xff" * 7
    with pytest.raises(soci.FormatError):
        soci.Ztoc.from_bytes(ztoc.to_bytes())


def test_overlapping_toc_entries_are_refused():
    ztoc = build(gzip_layer(tar_layer([Entry("a", b"x" * 2000),
                                       Entry("b", b"y")])))
    ztoc.entries[1].offset = ztoc.entries[0].offset + 10
    with pytest.raises(soci.FormatError, match="overlaps"):
        soci.Ztoc.from_bytes(ztoc.to_bytes())


# ------------------------------------------------------------- index

LAYER = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
         "digest": "sha256:" + "a" * 64, "size": 123}
ZTOC_DIGEST = "sha256:" + "b" * 64


def test_v2_index_is_the_exact_compact_json_soci_writes():
    desc = soci.ztoc_descriptor(LAYER, ZTOC_DIGEST, 99, 4194304)
    data = soci.build_index([desc])
    assert data == (
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.'
        b'manifest.v1+json","config":{"mediaType":"application/vnd.amazon'
        b'.soci.index.v2+json","digest":"sha256:44136fa355b3678a1146ad16f'
        b'7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[{"'
        b'mediaType":"application/octet-stream","digest":"' +
        ZTOC_DIGEST.encode() + b'","size":99,"annotations":{"com.amazon.'
        b'soci.image-layer-digest":"' + LAYER["digest"].encode() +
        b'","com.amazon.soci.image-layer-mediaType":"application/vnd.oci.'
        b'image.layer.v1.tar+gzip","com.amazon.soci.span-size":"4194304"}}'
        b'],"annotations":{"com.amazon.soci.build-tool-identifier":"AWS SO'
        b'CI CLI v0.2"}}')
    assert soci.parse_index(data)["layers"][0]["digest"] == ZTOC_DIGEST


def test_v1_index_puts_the_subject_between_layers_and_annotations():
    desc = soci.ztoc_descriptor(LAYER, ZTOC_DIGEST, 99, 4194304)
    subject = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
               "digest": "sha256:" + "c" * 64, "size": 500}
    data = soci.build_index([desc], subject=subject, version=1)
    doc = json.loads(data)
    assert list(doc) == ["schemaVersion", "mediaType", "config", "layers",
                         "subject", "annotations"]
    assert doc["config"]["mediaType"] == soci.INDEX_V1
    assert doc["subject"] == subject
    with pytest.raises(soci.SociError):
        soci.build_index([desc], version=1)
    with pytest.raises(soci.SociError):
        soci.build_index([])


def test_go_json_escapes_html_characters_like_go():
    assert soci.go_json({"a": "<&>\u2028"}) == \
        b'{"a":"\\u003c\\u0026\\u003e\\u2028"}'


def test_an_index_not_in_canonical_form_is_refused():
    desc = soci.ztoc_descriptor(LAYER, ZTOC_DIGEST, 99, 4194304)
    pretty = json.dumps(json.loads(soci.build_index([desc])), indent=1)
    with pytest.raises(soci.FormatError, match="canonical"):
        soci.parse_index(pretty.encode())
    with pytest.raises(soci.FormatError):
        soci.parse_index(b'{"mediaType": 1}')


def test_go_time_matches_marshaltext():
    assert soci.go_time(0) == "1970-01-01T00:00:00Z"
    assert soci.go_time(1700000000, 250000000) == "2023-11-14T22:13:20.25Z"
    assert soci.go_time(-1, 0) == "1969-12-31T23:59:59Z"
    assert soci.go_time(1, 123) == "1970-01-01T00:00:01.000000123Z"


# ------------------------------------------------------ image view

def tree_of(*layers):
    tree = soci.ImageTree()
    for i, entries in enumerate(layers):
        ztoc = build(gzip_layer(tar_layer(entries)))
        tree.add_layer(i, ztoc.entries)
    return tree


def names(tree, path):
    return [n for n, _, _ in tree.listdir(path)]


def test_whiteouts_and_opaque_directories_hide_lower_files():
    tree = tree_of(
        [Entry("a/x", b"1"), Entry("a/y", b"2"), Entry("b/z", b"3")],
        [Entry("a/.wh.x"), Entry("b/.wh..wh..opq"), Entry("b/new", b"4")])
    assert names(tree, "/a") == ["y"]
    assert names(tree, "/b") == ["new"]
    with pytest.raises(FileNotFoundError):
        tree.resolve("/a/x")


def test_upper_files_replace_lower_directories():
    tree = tree_of([Entry("d/f", b"1")], [Entry("d", b"now a file")])
    layer, entry = tree.resolve("d")
    assert (layer, entry.type) == (1, "reg")
    assert "d/f" not in tree.nodes


def test_symlinks_resolve_inside_the_image_and_loops_stop():
    tree = tree_of([
        Entry("etc/hosts", b"h"), Entry("abs", type="symlink",
                                        linkname="/etc/hosts"),
        Entry("bin/rel", type="symlink", linkname="../etc/hosts"),
        Entry("up", type="symlink", linkname="../../../etc/hosts"),
        Entry("loop", type="symlink", linkname="loop")])
    for path in ("abs", "bin/rel", "up"):
        assert tree.resolve(path)[1].name == "etc/hosts"
    with pytest.raises(soci.SociError, match="symbolic links"):
        tree.resolve("loop")


def test_hardlinks_read_their_targets_data():
    entries = [Entry("f", b"data"), Entry("h", type="hardlink",
                                          linkname="f")]
    tree = tree_of(entries)
    layer, entry = tree.resolve("h")
    assert tree.data_entry(layer, entry).name == "f"


def test_tarfile_matches_gnu_tar_extraction(tmp_path):
    # The reference the CLI tests use: tar -x of the same bytes.
    tar_bytes = tar_layer(mixed_entries()[:3])
    (tmp_path / "l.tar").write_bytes(tar_bytes)
    subprocess.run(["tar", "-xf", "l.tar"], cwd=tmp_path, check=True)
    assert (tmp_path / "etc" / "hosts").read_bytes() == \
        files_of(tar_bytes)["etc/hosts"]


def test_plain_zlib_agrees_on_a_bits_zero_span():
    tar_bytes = tar_layer(mixed_entries())
    blob = gzip_layer(tar_bytes, level=0)
    ztoc = build(blob)
    k = next(k for k in range(1, ztoc.span_count)
             if ztoc.span_bounds(k)[4] == 0)
    start, end, ustart, uend, _ = ztoc.span_bounds(k)
    inflater = zlib.decompressobj(-15, zdict=ztoc.window(k))
    assert inflater.decompress(blob[start:end])[:uend - ustart] == \
        reader(ztoc, blob).read_span(k)


# ------------------------------- FlatBuffers writer vs the reference

def reference_bytes(ztoc):
    """The same ztoc written with the `flatbuffers` package's Builder."""
    import flatbuffers
    b = flatbuffers.Builder(0)

    def string(text):
        return b.CreateString(text, errors="surrogateescape")

    def vector(offsets):
        b.StartVector(4, len(offsets), 4)
        for off in reversed(offsets):
            b.PrependUOffsetTRelative(off)
        return b.EndVector()

    def entry(e):
        name, kind, link, uname, gname, mtime = [string(s) for s in (
            e.name, e.type, e.linkname, e.uname, e.gname, e.mod_time)]
        xattrs = []
        for key, value in e.xattrs:
            k, v = string(key), string(value)
            b.StartObject(2)
            b.PrependUOffsetTRelativeSlot(0, k, 0)
            b.PrependUOffsetTRelativeSlot(1, v, 0)
            xattrs.append(b.EndObject())
        xv = vector(xattrs)
        b.StartObject(14)
        for slot, value in ((0, name), (1, kind)):
            b.PrependUOffsetTRelativeSlot(slot, value, 0)
        b.PrependInt64Slot(2, e.offset, 0)
        b.PrependInt64Slot(3, e.size, 0)
        b.PrependUOffsetTRelativeSlot(4, link, 0)
        b.PrependInt64Slot(5, e.mode, 0)
        b.PrependUint32Slot(6, e.uid, 0)
        b.PrependUint32Slot(7, e.gid, 0)
        for slot, value in ((8, uname), (9, gname), (10, mtime)):
            b.PrependUOffsetTRelativeSlot(slot, value, 0)
        b.PrependInt64Slot(11, e.devmajor, 0)
        b.PrependInt64Slot(12, e.devminor, 0)
        b.PrependUOffsetTRelativeSlot(13, xv, 0)
        return b.EndObject()

    version, tool = string(ztoc.version), string(ztoc.build_tool)
    offsets = [entry(e) for e in reversed(ztoc.entries)][::-1]
    metadata = vector(offsets)
    b.StartObject(1)
    b.PrependUOffsetTRelativeSlot(0, metadata, 0)
    toc = b.EndObject()
    checkpoints = b.CreateByteVector(bytes(ztoc.checkpoints))
    digests = vector([string(d) for d in ztoc.span_digests])
    b.StartObject(4)
    b.PrependInt32Slot(1, ztoc.max_span_id, 0)
    b.PrependUOffsetTRelativeSlot(2, digests, 0)
    b.PrependUOffsetTRelativeSlot(3, checkpoints, 0)
    b.PrependInt8Slot(0, {"gzip": 1, "uncompressed": 2}[ztoc.compression],
                      1)
    info = b.EndObject()
    b.StartObject(6)
    b.PrependUOffsetTRelativeSlot(0, version, 0)
    b.PrependUOffsetTRelativeSlot(1, tool, 0)
    b.PrependUOffsetTRelativeSlot(4, toc, 0)
    b.PrependInt64Slot(2, ztoc.compressed_size, 0)
    b.PrependInt64Slot(3, ztoc.uncompressed_size, 0)
    b.PrependUOffsetTRelativeSlot(5, info, 0)
    b.Finish(b.EndObject())
    return bytes(b.Output())


def random_entry(rng):
    def text(n):
        return "".join(rng.choice("abcé/.\udcff_") for _ in range(
            rng.randrange(n)))
    return soci.TocEntry(
        name=text(40), type=rng.choice(["reg", "dir", "symlink", ""]),
        offset=rng.choice([0, rng.randrange(1 << 40)]),
        size=rng.choice([0, rng.randrange(1 << 20)]), linkname=text(5),
        mode=rng.choice([0, 0o644, -1]), uid=rng.choice([0, 2**32 - 1]),
        gid=rng.choice([0, 1000]), uname=text(6), gname=text(3),
        mod_time=text(30), devmajor=rng.choice([0, 8]),
        devminor=rng.choice([0, 1]),
        xattrs=sorted((text(12), text(9)) for _ in range(rng.randrange(3))))


@pytest.mark.parametrize("seed", range(25))
def test_the_flatbuffers_writer_matches_the_reference_builder(seed):
    rng = random.Random(seed)
    ztoc = soci.Ztoc(
        version=rng.choice(["0.9", ""]), build_tool="AWS SOCI CLI v0.2",
        compressed_size=rng.choice([0, rng.randrange(1 << 40)]),
        uncompressed_size=rng.randrange(1 << 40),
        entries=[random_entry(rng) for _ in range(rng.randrange(40))],
        compression=rng.choice(["gzip", "uncompressed"]),
        span_digests=["sha256:%064x" % rng.randrange(1 << 256)
                      for _ in range(rng.randrange(5))],
        checkpoints=rng.randbytes(rng.randrange(100)),
        max_span_id=rng.randrange(-1, 5))
    assert ztoc.to_bytes() == reference_bytes(ztoc)


def test_a_built_ztoc_matches_the_reference_builder():
    ztoc = build(pigz_layer(tar_layer(mixed_entries()), 32))
    assert ztoc.to_bytes() == reference_bytes(ztoc)
    tar = build(tar_layer(mixed_entries()), "uncompressed")
    assert tar.to_bytes() == reference_bytes(tar)
