"""soci.py's TOC against Go's archive/tar, the reader soci-snapshotter uses.

tools/tarjson.go prints what Go reports for a tar; every field a ztoc
keeps, and the archive size, must be the same.  Needs `go` (scripts/
setup.sh installs Debian's golang-go).
"""

import io
import json
import os
import shutil
import subprocess

import pytest

import soci
from testimages import Entry, tar_layer

HERE = os.path.dirname(os.path.abspath(__file__))
GO_TYPES = {"0": "reg", "1": "hardlink", "2": "symlink", "3": "char",
            "4": "block", "5": "dir", "6": "fifo"}
FIELDS = ("name", "offset", "size", "linkname", "mode", "uid", "gid",
          "uname", "gname", "mod_time", "devmajor", "devminor")


@pytest.fixture(scope="module")
def tarjson(tmp_path_factory):
    go = shutil.which("go")
    assert go, "go is missing: run scripts/setup.sh"
    work = tmp_path_factory.mktemp("go")
    binary = work / "tarjson"
    env = dict(os.environ, GOCACHE=str(work / "cache"),
               GOPATH=str(work / "gopath"), GO111MODULE="off")
    subprocess.run([go, "build", "-o", str(binary),
                    os.path.join(HERE, "tools", "tarjson.go")],
                   check=True, env=env, capture_output=True)
    return str(binary)


def go_reads(tarjson, tar_bytes):
    out = subprocess.run([tarjson], input=tar_bytes, check=True,
                         capture_output=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def hermes_reads(tar_bytes):
    ztoc = soci.build_ztoc(io.BytesIO(tar_bytes), "uncompressed", 1 << 20)
    return ztoc.entries, ztoc.uncompressed_size


def assert_same_toc(tarjson, tar_bytes):
    rows = go_reads(tarjson, tar_bytes)
    assert "error" not in rows[-1], rows[-1]
    entries, end = hermes_reads(tar_bytes)
    assert rows[-1]["end"] == end
    assert len(rows) - 1 == len(entries)
    for row, entry in zip(rows, entries):
        expected = {k: row[k] for k in FIELDS}
        expected["type"] = GO_TYPES[row["type"]]
        expected["xattrs"] = [tuple(pair) for pair in row["xattrs"]]
        got = {k: getattr(entry, k) for k in expected}
        got["xattrs"] = list(entry.xattrs)
        assert got == expected
    return entries


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Files that push every tar format to its corners."""
    root = tmp_path_factory.mktemp("tree")
    deep = root / "sub" / ("d" * 120)
    deep.mkdir(parents=True)
    data = root / "sub" / "file"
    data.write_bytes(os.urandom(3000))
    os.link(data, root / "sub" / "hard")
    os.symlink("file", root / "sub" / "sym")
    os.symlink("x" * 150, root / "sub" / "longlink")
    (deep / ("n" * 120)).write_bytes(b"deep")
    (root / ("\u00e9" * 60)).write_bytes(b"utf-8 name")
    os.mkfifo(root / "fifo")
    os.mknod(root / "null", 0o20666, os.makedev(1, 3))
    # Too big for octal fields: GNU writes base-256, PAX a record.
    os.chown(data, 3_000_000, 4_000_000)
    os.utime(data, ns=(1700000000123456789, 1700000000123456789))
    os.setxattr(data, "user.k", b"val")
    return str(root)


@pytest.mark.parametrize("fmt", ["pax", "gnu", "oldgnu", "ustar", "v7"])
def test_gnu_tar_archives_read_as_go_reads_them(tarjson, tree, fmt):
    # GNU tar exits 2 after skipping what a format cannot hold (v7 and
    # long names); what it did write must still read the same.
    out = subprocess.run(
        ["tar", "--format=" + fmt, "--numeric-owner", "--xattrs",
         "--sort=name", "-C", tree, "-cf", "-", "."],
        capture_output=True)
    assert out.returncode in (0, 2) and out.stdout
    entries = assert_same_toc(tarjson, out.stdout)
    assert len(entries) >= 6


@pytest.mark.parametrize("fmt", ["pax", "gnu"])
def test_python_tarfile_archives_read_as_go_reads_them(tarjson, fmt):
    entries = [
        Entry("a" * 99, b"x"), Entry("p/" * 60 + "f", b"y"),
        Entry("l", type="symlink", linkname="t" * 120),
        Entry("neg", b"z", mtime=-1.5), Entry("frac", b"z", mtime=1.000001),
        Entry("late", b"z", mtime=8**11 + 5),
        Entry("dev", type="char", devmajor=300, devminor=7),
        Entry("x", b"z", pax={"SCHILY.xattr.security.capability": "\x01",
                              "comment": "\u00e9"}),
    ]
    assert_same_toc(tarjson, tar_layer(entries, fmt=fmt))


def test_a_nul_typeflag_reads_as_file_or_directory(tarjson):
    blob = bytearray(tar_layer([Entry("old/", type="dir"),
                                Entry("oldfile", b"q")], fmt="ustar"))
    for at in (0, 512):
        blob[at + 156] = 0
        checksum = sum(blob[at:at + 148]) + 256 + sum(blob[at + 156:at + 512])
        blob[at + 148:at + 156] = b"%06o\0 " % checksum
    entries = assert_same_toc(tarjson, bytes(blob))
    assert [e.type for e in entries] == ["dir", "reg"]


@pytest.mark.parametrize("cut", [1536, 2048])
def test_archives_without_a_full_end_marker_end_where_go_stops(tarjson,
                                                              cut):
    blob = tar_layer([Entry("f", b"x" * 700)])
    assert_same_toc(tarjson, blob[:cut])


@pytest.mark.parametrize("cut", [700, 1636])
def test_archives_cut_inside_an_entry_fail_in_both(tarjson, cut):
    blob = tar_layer([Entry("f", b"x" * 700)])[:cut]
    assert "error" in go_reads(tarjson, blob)[-1]
    with pytest.raises(soci.LayerError, match="truncated"):
        hermes_reads(blob)
