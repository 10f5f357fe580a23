"""Build and read SOCI indexes: one ztoc per layer, byte for byte.

A ztoc describes one layer blob: the tar entries it holds (as Go's
archive/tar reads them) and the points from which it can be inflated
without reading what comes before (spans).  `build_ztoc` makes one in a
single streaming pass; `Ztoc.to_bytes` writes the FlatBuffers bytes that
soci-snapshotter writes for the same input; `build_index` writes the SOCI
index manifest.  `SpanReader` reads file data back through a
``read(offset, length)`` callable, fetching and verifying only the spans
that hold it; `ImageTree` merges the layers' TOCs as a container sees them.

Standard library only (libz is reached through ctypes, since Python's
zlib has no Z_BLOCK, inflatePrime or raw dictionaries); safe to copy
alone.  FlatBuffers are written by a small writer that lays bytes out as
the reference builders do; the tests check it against the `flatbuffers`
package.
Limits: zstd layers and sparse tar entries are refused, not indexed.
"""
# Copyright 2026 The Hermes authors. SPDX-License-Identifier: Apache-2.0

import ctypes
import ctypes.util
import datetime
import functools
import hashlib
import json
import logging
import posixpath
import re
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

__version__ = "0.1.0"
__all__ = [
    "SociError", "LayerError", "UnsupportedLayer", "FormatError",
    "SpanError", "TocEntry", "Ztoc", "build_ztoc", "compression_of",
    "sniff_compression", "build_index", "parse_index", "SpanReader",
    "ImageTree", "SPAN_SIZE", "MIN_LAYER_SIZE", "BUILD_TOOL",
    "INDEX_V1", "INDEX_V2", "clean_path", "go_json", "go_time",
    "index_ztocs", "ztoc_descriptor",
]

log = logging.getLogger(__name__)

# soci-snapshotter's defaults: 4 MiB spans, no ztoc under 10 MiB.
SPAN_SIZE = 4 << 20
MIN_LAYER_SIZE = 10 << 20
BUILD_TOOL = "AWS SOCI CLI v0.2"
ZTOC_VERSION = "0.9"

INDEX_V1 = "application/vnd.amazon.soci.index.v1+json"
INDEX_V2 = "application/vnd.amazon.soci.index.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ZTOC_MEDIA_TYPE = "application/octet-stream"
EMPTY_CONFIG = b"{}"
ANN_BUILD_TOOL = "com.amazon.soci.build-tool-identifier"
ANN_LAYER_DIGEST = "com.amazon.soci.image-layer-digest"
ANN_LAYER_MEDIA_TYPE = "com.amazon.soci.image-layer-mediaType"
ANN_SPAN_SIZE = "com.amazon.soci.span-size"

WINDOW = 32768
# One checkpoint in the gzip zinfo blob: in (8), out (8), bits (1), window.
_CHECKPOINT = 17 + WINDOW
_BLOB_HEADER = 12
BLOCK = 512
# Go's archive/tar refuses PAX and GNU long-name records above 1 MiB.
_MAX_SPECIAL = 1 << 20
_READ_CHUNK = 1 << 18
_OUT_CHUNK = 1 << 20
# Readers refuse larger spans, so a hostile ztoc cannot ask for huge
# buffers; builders should stay far below (soci uses 4 MiB).
MAX_SPAN_SIZE = 256 << 20
# A span inflates to its span size plus at most one deflate block; this
# bound only keeps a hostile ztoc from asking for absurd allocations.
_SPAN_SLACK = 64 << 20

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}\Z")
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class SociError(Exception):
    """Root of the errors this module raises."""


class LayerError(SociError):
    """The layer's bytes are corrupt, truncated or unsafe."""


class UnsupportedLayer(SociError):
    """The layer is valid but cannot be indexed (zstd, sparse files)."""


class FormatError(SociError):
    """A ztoc or SOCI index is malformed."""


class SpanError(SociError):
    """A span's bytes do not match its digest or do not inflate."""


# ---------------------------------------------------------------- libz

class _ZStream(ctypes.Structure):
    _fields_ = [
        ("next_in", ctypes.c_void_p),
        ("avail_in", ctypes.c_uint),
        ("total_in", ctypes.c_ulong),
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_uint),
        ("total_out", ctypes.c_ulong),
        ("msg", ctypes.c_char_p),
        ("state", ctypes.c_void_p),
        ("zalloc", ctypes.c_void_p),
        ("zfree", ctypes.c_void_p),
        ("opaque", ctypes.c_void_p),
        ("data_type", ctypes.c_int),
        ("adler", ctypes.c_ulong),
        ("reserved", ctypes.c_ulong),
    ]


Z_OK, Z_STREAM_END, Z_NEED_DICT, Z_BUF_ERROR = 0, 1, 2, -5
Z_NO_FLUSH, Z_BLOCK = 0, 5
_libz_lock = threading.Lock()
_libz = None


def _load_libz():
    global _libz
    with _libz_lock:
        if _libz is None:
            name = ctypes.util.find_library("z") or "libz.so.1"
            lib = ctypes.CDLL(name)
            stream = ctypes.POINTER(_ZStream)
            lib.zlibVersion.restype = ctypes.c_char_p
            lib.inflateInit2_.argtypes = [
                stream, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.inflate.argtypes = [stream, ctypes.c_int]
            lib.inflateEnd.argtypes = [stream]
            lib.inflateReset2.argtypes = [stream, ctypes.c_int]
            lib.inflatePrime.argtypes = [stream, ctypes.c_int, ctypes.c_int]
            lib.inflateSetDictionary.argtypes = [
                stream, ctypes.c_char_p, ctypes.c_uint]
            _libz = lib
    return _libz


class _Inflater:
    """A z_stream driven through ctypes; the caller owns the buffers."""

    def __init__(self, wbits):
        self.lib = _load_libz()
        self.strm = _ZStream()
        self.ref = ctypes.byref(self.strm)
        ret = self.lib.inflateInit2_(
            self.ref, wbits, self.lib.zlibVersion(),
            ctypes.sizeof(_ZStream))
        if ret != Z_OK:
            raise SociError("inflateInit2 failed: %d" % ret)

    def set_input(self, address, length):
        self.strm.next_in = address
        self.strm.avail_in = length

    def set_output(self, address, length):
        self.strm.next_out = address
        self.strm.avail_out = length

    def inflate(self, flush):
        return self.lib.inflate(self.ref, flush)

    def reset(self, wbits):
        if self.lib.inflateReset2(self.ref, wbits) != Z_OK:
            raise SociError("inflateReset2 failed")

    def prime(self, bits, value):
        self.lib.inflatePrime(self.ref, bits, value)

    def set_dictionary(self, window):
        self.lib.inflateSetDictionary(self.ref, window, len(window))

    def message(self):
        msg = self.strm.msg
        return msg.decode("ascii", "replace") if msg else "unknown error"

    def close(self):
        if self.strm is not None:
            self.lib.inflateEnd(self.ref)
            self.strm = None


def _address(buf):
    """The address of a bytearray's storage, kept valid by the caller."""
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


# ------------------------------------------------------------ tar TOC

_TYPES = {
    b"0": "reg", b"1": "hardlink", b"2": "symlink", b"3": "char",
    b"4": "block", b"5": "dir", b"6": "fifo",
}
_HEADER_ONLY = {b"1", b"2", b"3", b"4", b"5", b"6"}
_TYPE_NAMES = {
    b"7": "contiguous file", b"S": "GNU sparse file", b"g": "PAX global",
    b"D": "GNU dump directory", b"M": "GNU multi-volume", b"V": "volume",
}


class TocEntry:
    """One tar entry as soci-snapshotter's TOC records it."""

    __slots__ = ("name", "type", "offset", "size", "linkname", "mode",
                 "uid", "gid", "uname", "gname", "mod_time", "devmajor",
                 "devminor", "xattrs")

    def __init__(self, name="", type="", offset=0, size=0, linkname="",
                 mode=0, uid=0, gid=0, uname="", gname="",
                 mod_time="0001-01-01T00:00:00Z", devmajor=0, devminor=0,
                 xattrs=()):
        self.name, self.type, self.offset, self.size = (
            name, type, offset, size)
        self.linkname, self.mode, self.uid, self.gid = (
            linkname, mode, uid, gid)
        self.uname, self.gname, self.mod_time = uname, gname, mod_time
        self.devmajor, self.devminor = devmajor, devminor
        self.xattrs = tuple(xattrs)

    def __repr__(self):
        return "TocEntry(%r, %s, offset=%d, size=%d)" % (
            self.name, self.type, self.offset, self.size)

    def __eq__(self, other):
        return isinstance(other, TocEntry) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)


def _text(raw):
    """Go keeps names as raw bytes; surrogateescape keeps them exact."""
    return raw.decode("utf-8", "surrogateescape")


def _cstring(field):
    end = field.find(b"\0")
    return field if end < 0 else field[:end]


_OCTAL = re.compile(rb"[0-7]+")


def _octal(field):
    digits = _cstring(field.strip(b" \0"))
    if not digits:
        return 0
    if not _OCTAL.fullmatch(digits):
        raise ValueError("bad octal field %r" % bytes(field))
    return int(digits, 8)


_numbers = {}


def _numeric(field):
    """A tar number: octal text, or base-256 when the top bit is set."""
    # Modes, owners and times repeat from header to header.
    value = _numbers.get(field)
    if value is None:
        value = _parse_numeric(field)
        if len(_numbers) < 65536:
            _numbers[field] = value
    return value


def _parse_numeric(field):
    if not field or not field[0] & 0x80:
        return _octal(field)
    inv = 0xFF if field[0] & 0x40 else 0
    value = 0
    for i, c in enumerate(field):
        c ^= inv
        if i == 0:
            c &= 0x7F
        if value >> 56:
            raise ValueError("base-256 field overflows")
        value = value << 8 | c
    if value >> 63:
        raise ValueError("base-256 field overflows")
    return ~value if inv else value


_HIGH_BYTES = bytes(range(128, 256))


def _checksum_ok(blk):
    """Go accepts the unsigned sum and the signed one old tars wrote."""
    stored = _octal(blk[148:156])
    unsigned = sum(blk) - sum(blk[148:156]) + 8 * 32
    if stored == unsigned:
        return True
    rest = blk[:148] + blk[156:]
    high = len(rest) - len(rest.translate(None, _HIGH_BYTES))
    return stored == unsigned - 256 * high


_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12s")


def _parse_header(blk):
    """The fields of one header block, read the way Go's reader does."""
    if not _checksum_ok(blk):
        raise ValueError("bad header checksum")
    (name, mode, uid, gid, size, mtime, _, kind, linkname, magic, version,
     uname, gname, devmajor, devminor, prefix, _) = _HEADER.unpack(blk)
    h = {
        "type": kind, "name": _cstring(name),
        "linkname": _cstring(linkname), "size": _numeric(size),
        "mode": _numeric(mode), "uid": _numeric(uid),
        "gid": _numeric(gid), "mtime": (_numeric(mtime), 0),
        "uname": b"", "gname": b"", "devmajor": 0, "devminor": 0,
    }
    ustar = magic == b"ustar\0"
    if ustar or (magic == b"ustar " and version == b" \0"):
        h["uname"] = _cstring(uname)
        h["gname"] = _cstring(gname)
        h["devmajor"] = _numeric(devmajor)
        h["devminor"] = _numeric(devminor)
    if ustar:
        # star archives keep times where USTAR keeps the prefix's tail.
        if blk[508:512] == b"tar\0":
            prefix = prefix[:131]
        prefix = _cstring(prefix)
        if prefix:
            h["name"] = prefix + b"/" + h["name"]
    return h


def _parse_pax(data):
    """PAX records as Go parses them; the later of two equal keys wins."""
    records = {}
    rest = data
    while rest:
        space = rest.find(b" ")
        if space < 0:
            raise ValueError("PAX record without length")
        try:
            n = int(rest[:space].decode("ascii"), 10)
        except (UnicodeDecodeError, ValueError):
            raise ValueError("bad PAX record length") from None
        if n < 5 or n > len(rest) or n <= space + 1:
            raise ValueError("bad PAX record length")
        record, rest = rest[space + 1:n], rest[n:]
        if not record.endswith(b"\n") or b"=" not in record:
            raise ValueError("malformed PAX record")
        key, value = record[:-1].split(b"=", 1)
        if not key or b"\0" in key:
            raise ValueError("malformed PAX record key")
        records[_text(key)] = _text(value)
    return records


def _pax_time(text):
    secs, _, frac = text.partition(".")
    seconds = int(secs, 10)
    if not frac:
        return seconds, 0
    if not frac.isdigit():
        raise ValueError("bad PAX time %r" % text)
    nanos = int(frac[:9].ljust(9, "0"))
    return seconds, -nanos if secs.startswith("-") else nanos


_EPOCH = datetime.datetime(1970, 1, 1)


_times = {}


def go_time(seconds, nanos=0):
    """Format like Go's time.Time.MarshalText, in UTC."""
    text = _times.get((seconds, nanos))
    if text is None:
        text = _format_time(seconds, nanos)
        if len(_times) < 65536:
            _times[seconds, nanos] = text
    return text


def _format_time(seconds, nanos):
    seconds, nanos = divmod(seconds * 10**9 + nanos, 10**9)
    try:
        when = _EPOCH + datetime.timedelta(seconds=seconds)
    except OverflowError:
        # Go fails to marshal such years; soci then writes "".
        return ""
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if len(text) != 19:
        return ""
    if nanos:
        text += ("." + "%09d" % nanos).rstrip("0")
    return text + "Z"


def _merge_pax(h, pax):
    fields = {"path": "name", "linkpath": "linkname",
              "uname": "uname", "gname": "gname"}
    for key, value in pax.items():
        if value == "":
            continue
        if key in fields:
            h[fields[key]] = value.encode("utf-8", "surrogateescape")
        elif key in ("uid", "gid", "size"):
            h[key] = int(value, 10)
        elif key == "mtime":
            h["mtime"] = _pax_time(value)
        elif key.startswith("GNU.sparse."):
            raise UnsupportedLayer("sparse file %r" % _text(h["name"]))


def _safe_name(name):
    """Refuse names that escape the layer root ('/x', '../x')."""
    parts = name.split("/")
    if name.startswith("/") or ".." in parts:
        raise LayerError("tar entry %r escapes the layer root" % name)


class _TarScanner:
    """Reads tar headers from a pushed byte stream, as Go's reader would.

    Only header blocks and PAX or GNU long-name records are copied; file
    data is skipped by arithmetic, so feeding costs little per byte.
    """

    def __init__(self):
        self.pos = 0
        self.entries = []
        self.end = None
        self._want = BLOCK
        self._buf = bytearray()
        self._skip_to = 0
        self._data_end = 0
        self._special = None
        self._zero = False
        self._pax = {}
        self._long = {}

    def feed(self, view):
        start = self.pos
        n = len(view)
        self.pos += n
        i = 0
        while i < n and self.end is None:
            if self._skip_to > start + i:
                i = min(n, self._skip_to - start)
                continue
            take = view[i:i + self._want - len(self._buf)]
            self._buf += take
            i += len(take)
            if len(self._buf) == self._want:
                self._record(start + i)

    def finish(self):
        """Mark the end of input; return the size Go's reader consumed."""
        if self.end is not None:
            return self.end
        at_boundary = not self._buf and self._special is None
        if at_boundary and self.pos >= self._data_end:
            self.end = self.pos
            return self.end
        raise LayerError("tar stream is truncated at offset %d" % self.pos)

    def _record(self, after):
        data = bytes(self._buf)
        self._buf.clear()
        self._want = BLOCK
        if self._special is not None:
            self._finish_special(data, after)
        elif data.count(0) == BLOCK:
            self._zero_block(after)
        else:
            self._header(data, after)

    def _zero_block(self, after):
        if self._zero:
            self.end = after
        self._zero = True

    def _header(self, blk, after):
        offset = after - BLOCK
        if self._zero:
            raise LayerError("tar has data after a zero block at %d" % offset)
        try:
            h = _parse_header(blk)
        except ValueError as e:
            raise LayerError("invalid tar header at offset %d: %s"
                             % (offset, e)) from None
        kind = h["type"]
        if kind in (b"x", b"g", b"L", b"K"):
            self._start_special(h, after)
        else:
            self._entry(h, after)

    def _start_special(self, h, after):
        size = h["size"]
        if size > _MAX_SPECIAL:
            raise LayerError("%s header of %d bytes at offset %d exceeds "
                             "the 1 MiB limit" % (
                                 "PAX" if h["type"] in b"xg" else "GNU",
                                 size, after - BLOCK))
        self._special = h
        if size == 0:
            self._finish_special(b"", after)
        else:
            self._want = size

    def _finish_special(self, data, after):
        h, self._special = self._special, None
        self._skip_to = self._data_end = after + (-len(data) % BLOCK)
        kind = h["type"]
        if kind in (b"L", b"K"):
            self._long[kind] = _cstring(data)
            return
        try:
            self._pax = _parse_pax(data)
        except ValueError as e:
            raise LayerError("invalid PAX header at offset %d: %s"
                             % (after - len(data) - BLOCK, e)) from None
        if kind == b"g":
            raise UnsupportedLayer("tar has a PAX global header")

    def _entry(self, h, after):
        pax, self._pax = self._pax, {}
        long_names, self._long = self._long, {}
        try:
            _merge_pax(h, pax)
        except ValueError as e:
            raise LayerError("invalid PAX value at offset %d: %s"
                             % (after, e)) from None
        if b"L" in long_names:
            h["name"] = long_names[b"L"]
        if b"K" in long_names:
            h["linkname"] = long_names[b"K"]
        kind = h["type"]
        if kind in (b"\0", b""):
            kind = b"5" if h["name"].endswith(b"/") else b"0"
        name = _text(h["name"])
        if kind not in _TYPES:
            what = _TYPE_NAMES.get(kind, "type %r" % kind)
            raise UnsupportedLayer("tar entry %r is a %s" % (name, what))
        _safe_name(name)
        size = h["size"]
        if size < 0:
            raise LayerError("tar entry %r has a negative size" % name)
        data = 0 if kind in _HEADER_ONLY else size
        self._data_end = after + data
        self._skip_to = after + data + (-data % BLOCK)
        self.entries.append(TocEntry(
            name, _TYPES[kind], after, size, _text(h["linkname"]),
            h["mode"], h["uid"] & 0xFFFFFFFF, h["gid"] & 0xFFFFFFFF,
            _text(h["uname"]), _text(h["gname"]), go_time(*h["mtime"]),
            h["devmajor"], h["devminor"], sorted(pax.items())))


# ------------------------------------------------------------ building

def compression_of(media_type):
    """'gzip', 'uncompressed', 'zstd', or None for a non-layer type.

    Follows containerd: a Docker ``diff.tar`` layer is read as plain tar.
    """
    if media_type.endswith(("+gzip", ".gzip", ".tar.gzip")):
        return "gzip"
    if media_type.endswith("+zstd"):
        return "zstd"
    if media_type.endswith((".tar", "rootfs.diff.tar")):
        return "uncompressed"
    return None


def sniff_compression(head):
    """Guess a blob's compression from its first bytes."""
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    return "uncompressed"


def _check_magic(head):
    if head[:2] != _GZIP_MAGIC[:len(head)]:
        kind = sniff_compression(bytes(head[:4]))
        raise LayerError("layer is not gzip (it looks %s)" % kind)


def _readinto(stream, buf):
    if hasattr(stream, "readinto"):
        return stream.readinto(buf)
    data = stream.read(len(buf))
    buf[:len(data)] = data
    return len(data)


class _GzipIndexer:
    """One pass over a gzip blob: checkpoints, span digests and the TOC.

    Checkpoints follow soci-snapshotter's rule: at a deflate block
    boundary (never after the last block of a member), when nothing has
    been output yet or more than `span` bytes have been since the last.
    """

    def __init__(self, span, scanner):
        self.span = span
        self.scanner = scanner
        self.z = _Inflater(47)
        self.inbuf = bytearray(_READ_CHUNK)
        self.out = bytearray(WINDOW + _OUT_CHUNK)
        self.in_addr = _address(self.inbuf)
        self.out_addr = _address(self.out)
        self.fill = 0
        self.totin = self.totout = self.last = 0
        self.chunk_start = 0
        self.prev_byte = b""
        self.points = []
        self.digests = []
        self.hasher = None
        self.hashed = 0

    def run(self, stream):
        try:
            ended = False
            while True:
                n = _readinto(stream, self.inbuf)
                if n == 0:
                    break
                if self.totin == 0:
                    _check_magic(self.inbuf[:n])
                if ended:
                    self.z.reset(47)
                ended = self._chunk(n)
            if not ended:
                raise LayerError("gzip stream is truncated at byte %d"
                                 % self.totin)
            self._close_span(self.totin)
        finally:
            self.z.close()

    def _chunk(self, n):
        """Inflate one input chunk; True when it ends a gzip member."""
        self.chunk_start = self.totin
        self.z.set_input(self.in_addr, n)
        ended = False
        while self.z.strm.avail_in:
            if ended:
                self.z.reset(47)
            ended = self._step()
        self._hash_to(self.totin)
        self.prev_byte = self.inbuf[n - 1:n]
        return ended

    def _step(self):
        if len(self.out) - self.fill < WINDOW:
            self.out[:WINDOW] = self.out[self.fill - WINDOW:self.fill]
            self.fill = WINDOW
        room = len(self.out) - self.fill
        avail_in = self.z.strm.avail_in
        self.z.set_output(self.out_addr + self.fill, room)
        ret = self.z.inflate(Z_BLOCK)
        if ret not in (Z_OK, Z_STREAM_END, Z_BUF_ERROR):
            raise LayerError("corrupt gzip data near byte %d: %s"
                             % (self.totin, self.z.message()))
        produced = room - self.z.strm.avail_out
        consumed = avail_in - self.z.strm.avail_in
        if ret == Z_BUF_ERROR and not (consumed or produced):
            raise LayerError("gzip data stalls near byte %d" % self.totin)
        self.totin += consumed
        if produced:
            self.scanner.feed(
                memoryview(self.out)[self.fill:self.fill + produced])
            self.fill += produced
            self.totout += produced
        if ret == Z_STREAM_END:
            return True
        self._maybe_checkpoint(self.z.strm.data_type)
        return False

    def _maybe_checkpoint(self, data_type):
        if not data_type & 128 or data_type & 64:
            return
        if self.totout and self.totout - self.last <= self.span:
            return
        bits = data_type & 7
        self._close_span(self.totin)
        self.hasher = hashlib.sha256()
        if bits:
            self.hasher.update(self._byte_before(self.totin))
        self.points.append(struct.pack(
            "<qqB", self.totin, self.totout, bits) + self._window())
        self.last = self.totout

    def _byte_before(self, pos):
        i = pos - 1 - self.chunk_start
        return self.inbuf[i:i + 1] if i >= 0 else self.prev_byte

    def _window(self):
        if self.fill >= WINDOW:
            return bytes(self.out[self.fill - WINDOW:self.fill])
        return bytes(WINDOW - self.fill) + bytes(self.out[:self.fill])

    def _hash_to(self, pos):
        if self.hasher is not None and pos > self.hashed:
            lo = self.hashed - self.chunk_start
            self.hasher.update(
                memoryview(self.inbuf)[lo:pos - self.chunk_start])
        self.hashed = pos

    def _close_span(self, pos):
        self._hash_to(pos)
        if self.hasher is not None:
            self.digests.append("sha256:" + self.hasher.hexdigest())

    def checkpoints(self):
        head = struct.pack("<iq", len(self.points), self.span)
        return head + b"".join(self.points)


def _tar_zinfo(span, size):
    w = _FlatWriter()
    w.start(3)
    w.scalar(0, _I32, 2)
    w.scalar(1, _I64, span)
    w.scalar(2, _I64, size)
    return w.finish(w.end())


def _index_tar(stream, span, scanner):
    """Span digests over a plain tar blob cut into a fixed grid."""
    buf = bytearray(_READ_CHUNK)
    view = memoryview(buf)
    digests, hasher, total = [], hashlib.sha256(), 0
    while True:
        n = _readinto(stream, buf)
        if n == 0:
            break
        scanner.feed(view[:n])
        i = 0
        while i < n:
            take = min(n - i, span - total % span)
            hasher.update(view[i:i + take])
            i += take
            total += take
            if total % span == 0:
                digests.append("sha256:" + hasher.hexdigest())
                hasher = hashlib.sha256()
    if total % span:
        digests.append("sha256:" + hasher.hexdigest())
    return total, digests


def build_ztoc(stream, compression="gzip", span_size=SPAN_SIZE,
               build_tool=BUILD_TOOL):
    """Read a layer blob once from `stream` and return its `Ztoc`.

    `stream` needs only ``read`` (``readinto`` is used when present);
    memory stays bounded by the ztoc itself, never the layer.
    """
    if compression == "zstd":
        raise UnsupportedLayer("zstd layers cannot be indexed yet")
    if compression not in ("gzip", "uncompressed"):
        raise UnsupportedLayer("unknown compression %r" % compression)
    if not 0 < span_size <= MAX_SPAN_SIZE:
        raise SociError("span size must be between 1 byte and %d MiB"
                        % (MAX_SPAN_SIZE >> 20))
    scanner = _TarScanner()
    if compression == "gzip":
        return _build_gzip(stream, span_size, build_tool, scanner)
    size, digests = _index_tar(stream, span_size, scanner)
    if size == 0:
        raise LayerError("layer is empty")
    return Ztoc(
        version=ZTOC_VERSION, build_tool=build_tool,
        compressed_size=size, uncompressed_size=scanner.finish(),
        entries=scanner.entries, compression="uncompressed",
        span_digests=digests, checkpoints=_tar_zinfo(span_size, size))


def _build_gzip(stream, span_size, build_tool, scanner):
    indexer = _GzipIndexer(span_size, scanner)
    indexer.run(stream)
    if not indexer.points:
        raise LayerError("gzip stream has no deflate data")
    return Ztoc(
        version=ZTOC_VERSION, build_tool=build_tool,
        compressed_size=indexer.totin,
        uncompressed_size=scanner.finish(), entries=scanner.entries,
        compression="gzip", span_digests=indexer.digests,
        checkpoints=indexer.checkpoints())


# ---------------------------------------------------------------- ztoc

class Ztoc:
    """A layer's table of contents and span map.

    `entries` are `TocEntry` objects in archive order; `checkpoints` is
    the raw zinfo (the gzip checkpoint blob, or a TarZinfo buffer).
    """

    def __init__(self, version=ZTOC_VERSION, build_tool=BUILD_TOOL,
                 compressed_size=0, uncompressed_size=0, entries=(),
                 compression="gzip", span_digests=(), checkpoints=b"",
                 max_span_id=None):
        self.version = version
        self.build_tool = build_tool
        self.compressed_size = compressed_size
        self.uncompressed_size = uncompressed_size
        self.entries = list(entries)
        self.compression = compression
        self.span_digests = list(span_digests)
        self.checkpoints = checkpoints
        if max_span_id is None:
            max_span_id = len(self.span_digests) - 1
        self.max_span_id = max_span_id
        self._points = None

    # -- writing

    def to_bytes(self):
        """The FlatBuffers bytes, in soci-snapshotter's call order."""
        w = _FlatWriter()
        version = w.string(self.version)
        tool = w.string(self.build_tool)
        toc = _fb_toc(w, self.entries)
        checkpoints = w.byte_vector(bytes(self.checkpoints))
        digests = w.offset_vector([w.string(d) for d in self.span_digests])
        w.start(4)
        w.scalar(1, _I32, self.max_span_id)
        w.offset(2, digests)
        w.offset(3, checkpoints)
        algorithm = {"gzip": 1, "uncompressed": 2}[self.compression]
        w.scalar(0, _I8, algorithm, default=1)
        info = w.end()
        w.start(6)
        w.offset(0, version)
        w.offset(1, tool)
        w.offset(4, toc)
        w.scalar(2, _I64, self.compressed_size)
        w.scalar(3, _I64, self.uncompressed_size)
        w.offset(5, info)
        return w.finish(w.end())

    # -- reading

    @classmethod
    def from_bytes(cls, data):
        """Parse and validate a ztoc; hostile input raises FormatError."""
        try:
            ztoc = _read_ztoc(_FlatBuffer(bytes(data)))
            ztoc.validate()
        except (IndexError, struct.error, UnicodeDecodeError) as e:
            raise FormatError("malformed ztoc: %s" % e) from None
        return ztoc

    @property
    def span_count(self):
        return self.max_span_id + 1

    @functools.cached_property
    def span_size(self):
        """From the zinfo; cached, since every span lookup needs it."""
        if self.compression == "gzip":
            return struct.unpack_from("<q", self.checkpoints, 4)[0]
        fb = _FlatBuffer(bytes(self.checkpoints))
        return fb.scalar(fb.root(), 1, "<q", 0)

    def validate(self):
        """Check what a reader relies on; raise FormatError otherwise."""
        if self.max_span_id < 0:
            raise FormatError("ztoc has no spans")
        if len(self.span_digests) != self.span_count:
            raise FormatError("ztoc has %d span digests for %d spans" % (
                len(self.span_digests), self.span_count))
        for d in self.span_digests:
            if not _DIGEST_RE.match(d):
                raise FormatError("bad span digest %r" % d[:80])
        if not 0 < self.compressed_size or self.uncompressed_size < 0:
            raise FormatError("ztoc has impossible archive sizes")
        if not 0 < self.span_size <= MAX_SPAN_SIZE:
            raise FormatError("ztoc span size %d is out of range"
                              % self.span_size)
        self._check_spans()
        _check_toc(self.entries, self.uncompressed_size)

    def _check_spans(self):
        if self.compression == "uncompressed":
            # validate() has checked the span size already.
            want = -(-self.compressed_size // self.span_size)
            if want != self.span_count:
                raise FormatError("tar zinfo does not match the ztoc")
            return
        points = self._gzip_points()
        if len(points) != self.span_count:
            raise FormatError("ztoc has %d checkpoints for %d spans" % (
                len(points), self.span_count))
        prev_in, prev_out = -1, -1
        for cin, out, bits in points:
            if cin <= prev_in or out < prev_out or bits > 7:
                raise FormatError("ztoc checkpoints are out of order")
            if cin > self.compressed_size or (bits and cin < 1):
                raise FormatError("ztoc checkpoint lies outside the blob")
            too_big = out - prev_out > self.span_size + _SPAN_SLACK
            if prev_out >= 0 and too_big:
                raise FormatError("ztoc span is implausibly large")
            prev_in, prev_out = cin, out
        if self.uncompressed_size - prev_out > (
                self.span_size + _SPAN_SLACK):
            raise FormatError("ztoc last span is implausibly large")

    def _gzip_points(self):
        """[(in, out, bits)], with the v1 blob's missing first point."""
        if self._points is not None:
            return self._points
        blob = self.checkpoints
        if len(blob) < _BLOB_HEADER:
            raise FormatError("gzip zinfo is shorter than its header")
        count, span = struct.unpack_from("<iq", blob, 0)
        body = len(blob) - _BLOB_HEADER
        if count < 0 or span <= 0 or body % _CHECKPOINT:
            raise FormatError("gzip zinfo has a bad header or length")
        stored = body // _CHECKPOINT
        points = [
            struct.unpack_from("<qqB", blob, _BLOB_HEADER + _CHECKPOINT * k)
            for k in range(stored)]
        if stored == count - 1:
            # Legacy v1 blobs leave out the point after the gzip header.
            points.insert(0, (10, 0, 0))
        elif stored != count:
            raise FormatError("gzip zinfo length does not match its count")
        self._points = points
        return points

    def window(self, k):
        """The 32 KiB dictionary that span k inflates with."""
        points = self._gzip_points()
        legacy = len(points) != (len(self.checkpoints) - _BLOB_HEADER
                                 ) // _CHECKPOINT
        if legacy:
            if k == 0:
                return bytes(WINDOW)
            k -= 1
        start = _BLOB_HEADER + _CHECKPOINT * k + 17
        return bytes(self.checkpoints[start:start + WINDOW])

    def span_bounds(self, k):
        """(compressed start, end, uncompressed start, end, bits)."""
        if not 0 <= k <= self.max_span_id:
            raise IndexError("span %d out of range" % k)
        if self.compression == "uncompressed":
            start = k * self.span_size
            end = min(start + self.span_size, self.compressed_size)
            return start, end, start, end, 0
        points = self._gzip_points()
        cin, out, bits = points[k]
        last = k == self.max_span_id
        cend = self.compressed_size if last else points[k + 1][0]
        uend = self.uncompressed_size if last else points[k + 1][1]
        return cin - (1 if bits else 0), cend, out, max(out, uend), bits

    def span_of(self, offset):
        """The span holding uncompressed `offset`."""
        if self.compression == "uncompressed":
            return min(offset // self.span_size, self.max_span_id)
        points = self._gzip_points()
        lo, hi = 0, len(points) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if points[mid][1] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo


def _check_toc(entries, usize):
    """Offsets must leave room for each header, as soci's loader asks."""
    next_header = 0
    for e in sorted(entries, key=lambda e: e.offset):
        if e.offset < next_header or e.size < 0:
            raise FormatError("ztoc entry %r overlaps the one before" %
                              e.name[:200])
        if e.type not in _TYPES.values():
            raise FormatError("ztoc entry %r has unknown type %r" % (
                e.name[:200], e.type[:20]))
        data = e.size if e.type == "reg" else 0
        if e.offset + data > usize:
            raise FormatError("ztoc entry %r lies past the archive end" %
                              e.name[:200])
        next_header = e.offset + e.size + (-e.size % BLOCK)


# ------------------------------------------------ FlatBuffers plumbing

_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_I64 = struct.Struct("<q")
_I8 = struct.Struct("<b")
_ZEROS = bytes(8)


class _FlatWriter:
    """Writes FlatBuffers back to front, byte for byte as the reference
    builders (Go's and Python's ``flatbuffers``) lay them out: the same
    alignment padding, vtable trimming and vtable sharing.  Pieces are
    kept in a list and joined once, which is much faster than the
    reference Python builder on TOCs of many thousand entries.
    """

    def __init__(self):
        self.pieces = []
        self.chunks = []
        self.size = 0
        self.minalign = 1
        self.vtables = {}
        self._slots = None
        self._object_end = 0

    def _put(self, data):
        self.pieces.append(data)
        self.size += len(data)
        if len(self.pieces) >= 4096:
            # Small bytes objects cost ~40 bytes each; fold them.
            self.chunks.append(b"".join(reversed(self.pieces)))
            self.pieces = []

    def _prep(self, align, extra):
        self.minalign = max(self.minalign, align)
        pad = -(self.size + extra) % align
        if pad:
            self._put(bytes(pad))

    def _aligned(self, data, align):
        """Put `data` after the padding that aligns its start to `align`.

        Written back to front, the padding goes in first (behind it).
        """
        self.minalign = max(self.minalign, align)
        pad = -(self.size + len(data)) % align
        self._put(data + _ZEROS[:pad] if pad else data)

    def string(self, text):
        raw = text.encode("utf-8", "surrogateescape")
        self._aligned(_U32.pack(len(raw)) + raw + b"\0", 4)
        return self.size

    def byte_vector(self, data):
        self._prep(4, len(data))
        self._put(struct.pack("<I", len(data)) + data)
        return self.size

    def offset_vector(self, offsets):
        self._prep(4, 4 * len(offsets))
        values, at = [], self.size
        for off in reversed(offsets):
            values.append(at + 4 - off)
            at += 4
        values.append(len(offsets))
        self._put(struct.pack("<%dI" % len(values), *reversed(values)))
        return self.size

    def start(self, fields):
        self._slots = [0] * fields
        self._object_end = self.size

    def scalar(self, slot, packer, value, default=0):
        if value != default:
            self._aligned(packer.pack(value), packer.size)
            self._slots[slot] = self.size

    def offset(self, slot, off):
        pad = -self.size % 4
        self._put(_U32.pack(self.size + pad + 4 - off) + _ZEROS[:pad])
        self._slots[slot] = self.size

    def end(self):
        self._prep(4, 0)
        obj = self.size + 4
        fields = [obj - at if at else 0 for at in self._slots]
        while fields and not fields[-1]:
            fields.pop()
        key = (tuple(fields), obj - self._object_end)
        known = self.vtables.get(key)
        if known is not None:
            self._put(struct.pack("<i", known - obj))
            return obj
        vtable = struct.pack("<%dH" % (len(fields) + 2),
                             4 + 2 * len(fields), key[1], *fields)
        self._put(struct.pack("<i", len(vtable)))
        self._put(vtable)
        self.vtables[key] = self.size
        return obj

    def finish(self, root):
        self._prep(self.minalign, 4)
        self._prep(4, 0)
        self._put(struct.pack("<I", self.size + 4 - root))
        self.chunks.append(b"".join(reversed(self.pieces)))
        return b"".join(reversed(self.chunks))


def _fb_toc(w, entries):
    offsets = [None] * len(entries)
    for i in range(len(entries) - 1, -1, -1):
        offsets[i] = _fb_entry(w, entries[i])
    metadata = w.offset_vector(offsets)
    w.start(1)
    w.offset(0, metadata)
    return w.end()


def _fb_entry(w, e):
    strings = [w.string(s) for s in (
        e.name, e.type, e.linkname, e.uname, e.gname, e.mod_time)]
    xattrs = []
    for key, value in e.xattrs:
        k, v = w.string(key), w.string(value)
        w.start(2)
        w.offset(0, k)
        w.offset(1, v)
        xattrs.append(w.end())
    xattr_vector = w.offset_vector(xattrs)
    name, kind, linkname, uname, gname, mod_time = strings
    w.start(14)
    w.offset(0, name)
    w.offset(1, kind)
    w.scalar(2, _I64, e.offset)
    w.scalar(3, _I64, e.size)
    w.offset(4, linkname)
    w.scalar(5, _I64, e.mode)
    w.scalar(6, _U32, e.uid)
    w.scalar(7, _U32, e.gid)
    w.offset(8, uname)
    w.offset(9, gname)
    w.offset(10, mod_time)
    w.scalar(11, _I64, e.devmajor)
    w.scalar(12, _I64, e.devminor)
    w.offset(13, xattr_vector)
    return w.end()


class _FlatBuffer:
    """Bounds-checked reads of a FlatBuffers buffer (no generated code).

    Every offset is checked against the buffer, and a vector's length
    against the bytes left, so hostile input cannot make it allocate
    more than the buffer's own size.
    """

    def __init__(self, data):
        self.data = data

    def _u32(self, pos):
        if pos < 0 or pos + 4 > len(self.data):
            raise IndexError("offset %d outside the buffer" % pos)
        return struct.unpack_from("<I", self.data, pos)[0]

    def root(self):
        return self._u32(0)

    def _field(self, table, slot):
        vtable = table - struct.unpack_from("<i", self.data, table)[0]
        if vtable < 0 or vtable + 4 > len(self.data):
            raise IndexError("vtable outside the buffer")
        vsize = struct.unpack_from("<H", self.data, vtable)[0]
        if 4 + 2 * slot + 2 > vsize or vtable + vsize > len(self.data):
            return 0
        rel = struct.unpack_from("<H", self.data, vtable + 4 + 2 * slot)[0]
        return table + rel if rel else 0

    def scalar(self, table, slot, fmt, default):
        pos = self._field(table, slot)
        if not pos:
            return default
        if pos + struct.calcsize(fmt) > len(self.data):
            raise IndexError("field outside the buffer")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def table(self, table, slot):
        pos = self._field(table, slot)
        return pos + self._u32(pos) if pos else None

    def _vector(self, pos, elem):
        start = pos + self._u32(pos)
        length = self._u32(start)
        if start + 4 + length * elem > len(self.data):
            raise IndexError("vector runs past the buffer")
        return start + 4, length

    def bytes(self, table, slot):
        pos = self._field(table, slot)
        if not pos:
            return b""
        start, length = self._vector(pos, 1)
        return self.data[start:start + length]

    def string(self, table, slot):
        return _text(self.bytes(table, slot))

    def tables(self, table, slot):
        pos = self._field(table, slot)
        if not pos:
            return []
        start, length = self._vector(pos, 4)
        return [start + 4 * i + self._u32(start + 4 * i)
                for i in range(length)]

    def strings(self, table, slot):
        return [_text(self._string_at(p))
                for p in self.tables(table, slot)]

    def _string_at(self, pos):
        length = self._u32(pos)
        if pos + 4 + length > len(self.data):
            raise IndexError("string runs past the buffer")
        return self.data[pos + 4:pos + 4 + length]


def _read_ztoc(fb):
    root = fb.root()
    info = fb.table(root, 5)
    toc = fb.table(root, 4)
    if info is None or toc is None:
        raise FormatError("ztoc lacks its TOC or compression info")
    algorithm = fb.scalar(info, 0, "<b", 1)
    names = {1: "gzip", 2: "uncompressed"}
    if algorithm not in names:
        raise FormatError("ztoc names unknown compression %d" % algorithm)
    return Ztoc(
        version=fb.string(root, 0), build_tool=fb.string(root, 1),
        compressed_size=fb.scalar(root, 2, "<q", 0),
        uncompressed_size=fb.scalar(root, 3, "<q", 0),
        entries=[_read_entry(fb, t) for t in fb.tables(toc, 0)],
        compression=names[algorithm],
        max_span_id=fb.scalar(info, 1, "<i", 0),
        span_digests=fb.strings(info, 2),
        checkpoints=fb.bytes(info, 3))


def _read_entry(fb, t):
    xattrs = [(fb.string(x, 0), fb.string(x, 1)) for x in fb.tables(t, 13)]
    return TocEntry(
        name=fb.string(t, 0), type=fb.string(t, 1),
        offset=fb.scalar(t, 2, "<q", 0), size=fb.scalar(t, 3, "<q", 0),
        linkname=fb.string(t, 4), mode=fb.scalar(t, 5, "<q", 0),
        uid=fb.scalar(t, 6, "<I", 0), gid=fb.scalar(t, 7, "<I", 0),
        uname=fb.string(t, 8), gname=fb.string(t, 9),
        mod_time=fb.string(t, 10), devmajor=fb.scalar(t, 11, "<q", 0),
        devminor=fb.scalar(t, 12, "<q", 0), xattrs=xattrs)


# --------------------------------------------------------------- index

def go_json(value):
    """Compact JSON escaped as Go's encoding/json writes it."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"),
                         ("&", "\\u0026"), ("\u2028", "\\u2028"),
                         ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text.encode("utf-8", "surrogateescape")


def _descriptor(media_type, digest, size, annotations=None):
    desc = {"mediaType": media_type, "digest": digest, "size": size}
    if annotations:
        desc["annotations"] = dict(sorted(annotations.items()))
    return desc


def ztoc_descriptor(layer, ztoc_digest, ztoc_size, span_size):
    """The index's entry for one layer's ztoc; `layer` is its descriptor."""
    return _descriptor(ZTOC_MEDIA_TYPE, ztoc_digest, ztoc_size, {
        ANN_LAYER_DIGEST: layer["digest"],
        ANN_LAYER_MEDIA_TYPE: layer["mediaType"],
        ANN_SPAN_SIZE: str(span_size),
    })


def build_index(ztocs, subject=None, version=2, build_tool=BUILD_TOOL):
    """The SOCI index manifest bytes, exactly as soci-snapshotter writes.

    `ztocs` are `ztoc_descriptor` results in the image's layer order;
    `subject` (the image manifest's descriptor) is required for v1 and
    refused for v2.
    """
    if not ztocs:
        raise SociError("an index needs at least one ztoc")
    if version not in (1, 2) or (version == 1) != (subject is not None):
        raise SociError("v1 indexes need a subject and v2 ones none")
    config = _descriptor(
        INDEX_V1 if version == 1 else INDEX_V2,
        "sha256:" + hashlib.sha256(EMPTY_CONFIG).hexdigest(),
        len(EMPTY_CONFIG))
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": config, "layers": list(ztocs)}
    if subject is not None:
        doc["subject"] = _descriptor(
            subject["mediaType"], subject["digest"], subject["size"])
    doc["annotations"] = {ANN_BUILD_TOOL: build_tool}
    return go_json(doc)


def parse_index(data):
    """Decode and check a SOCI index; return the manifest as a dict.

    Refuses bytes that are not in the canonical form, since
    soci-snapshotter re-encodes an index and rejects it when they differ.
    """
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise FormatError("SOCI index is not JSON: %s" % e) from None
    if not isinstance(doc, dict) or doc.get("mediaType") != OCI_MANIFEST:
        raise FormatError("SOCI index is not an OCI image manifest")
    kind = (doc.get("config") or {}).get("mediaType")
    if kind not in (INDEX_V1, INDEX_V2):
        raise FormatError("not a SOCI index (config type %r)" % kind)
    layers = doc.get("layers")
    if not isinstance(layers, list) or not layers:
        raise FormatError("SOCI index lists no ztocs")
    for desc in layers:
        _check_descriptor(desc)
    if go_json(doc) != bytes(data):
        raise FormatError("SOCI index is not in canonical form")
    return doc


def _check_descriptor(desc):
    ok = (isinstance(desc, dict)
          and _DIGEST_RE.match(str(desc.get("digest")))
          and type(desc.get("size")) is int and desc["size"] >= 0)
    if not ok:
        raise FormatError("bad descriptor in SOCI index: %r"
                          % (str(desc)[:200],))


def index_ztocs(doc):
    """{layer digest: ztoc descriptor} for the ztocs an index lists."""
    found = {}
    for desc in doc["layers"]:
        layer = (desc.get("annotations") or {}).get(ANN_LAYER_DIGEST)
        if desc.get("mediaType") == ZTOC_MEDIA_TYPE and layer:
            found[layer] = desc
    return found


# ------------------------------------------------------------- reading

class SpanReader:
    """Reads a layer's uncompressed bytes through its ztoc.

    `read(offset, length)` returns bytes of the layer blob (for example
    an HTTP Range request).  Each span is fetched whole, checked against
    its digest and inflated from its checkpoint.  `fetched` counts the
    compressed bytes asked of `read`.
    """

    def __init__(self, ztoc, read, workers=4):
        self.ztoc = ztoc
        self._read = read
        self.workers = workers
        self.fetched = 0
        self._lock = threading.Lock()

    def fetch_span(self, k):
        """Span k's compressed bytes, verified against its digest."""
        cstart, cend = self.ztoc.span_bounds(k)[:2]
        data = self._read(cstart, cend - cstart)
        with self._lock:
            self.fetched += len(data)
        if len(data) != cend - cstart:
            raise SpanError("span %d: got %d bytes, expected %d" % (
                k, len(data), cend - cstart))
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if digest != self.ztoc.span_digests[k]:
            raise SpanError("span %d: digest %s does not match the ztoc's "
                            "%s" % (k, digest, self.ztoc.span_digests[k]))
        return data

    def read_span(self, k):
        """Span k, uncompressed (up to the end of the tar archive)."""
        data = self.fetch_span(k)
        cstart, cend, ustart, uend, bits = self.ztoc.span_bounds(k)
        if self.ztoc.compression == "uncompressed":
            return data
        want = min(uend, self.ztoc.uncompressed_size) - ustart
        return _inflate_span(data, bits, self.ztoc.window(k), max(want, 0))

    def iter_range(self, offset, length):
        """Yield the uncompressed bytes [offset, offset+length) in pieces.

        Spans are fetched by a few threads ahead of the consumer, so
        round trips to a remote registry overlap.
        """
        if length <= 0:
            return
        end = offset + length
        if end > self.ztoc.uncompressed_size:
            raise SpanError("range ends past the archive (%d > %d)" % (
                end, self.ztoc.uncompressed_size))
        first = self.ztoc.span_of(offset)
        last = self.ztoc.span_of(end - 1)
        with ThreadPoolExecutor(self.workers) as pool:
            spans = _bounded_map(pool, self.read_span,
                                 range(first, last + 1), self.workers)
            for k, data in zip(range(first, last + 1), spans):
                ustart = self.ztoc.span_bounds(k)[2]
                lo = max(offset - ustart, 0)
                hi = min(end - ustart, len(data))
                yield data[lo:hi]

    def read(self, offset, length):
        return b"".join(self.iter_range(offset, length))


def _bounded_map(pool, fn, items, ahead):
    """Like pool.map, but at most `ahead` calls run before being used."""
    items = iter(items)
    pending = []
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            break
    while pending:
        result = pending.pop(0).result()
        for item in items:
            pending.append(pool.submit(fn, item))
            break
        yield result


def _inflate_span(data, bits, window, want):
    """Inflate `want` bytes from a span that starts at a checkpoint."""
    src = bytearray(data)
    out = bytearray(want)
    z = _Inflater(-15)
    try:
        pos = 0
        if bits:
            z.prime(bits, src[0] >> (8 - bits))
            pos = 1
        z.set_dictionary(window)
        _inflate_into(z, src, pos, out)
    finally:
        z.close()
    return bytes(out)


def _inflate_into(z, src, pos, out):
    src_addr, out_addr = _address(src), _address(out) if out else 0
    done, raw = 0, True
    z.set_input(src_addr + pos, len(src) - pos)
    while done < len(out):
        z.set_output(out_addr + done, len(out) - done)
        room = len(out) - done
        ret = z.inflate(Z_NO_FLUSH)
        done += room - z.strm.avail_out
        if ret == Z_STREAM_END and done < len(out):
            # A member ends inside the span: raw mode leaves its 8-byte
            # trailer unread; gzip mode takes later headers and trailers.
            left = z.strm.avail_in - (8 if raw else 0)
            if left <= 0:
                break
            z.set_input(src_addr + len(src) - left, left)
            z.reset(47)
            raw = False
        elif ret == Z_BUF_ERROR or ret == Z_STREAM_END:
            break
        elif ret != Z_OK:
            raise SpanError("span does not inflate: %s" % z.message())
    if done != len(out):
        raise SpanError("span inflated to %d bytes, expected %d" % (
            done, len(out)))


# ---------------------------------------------------------- image view

def clean_path(name):
    """A TOC name as a path below the root: no '/', './' or trailing '/'."""
    path = posixpath.normpath("/" + name).lstrip("/")
    return "" if path == "." else path


_DIR = TocEntry(name="", type="dir", mode=0o755)
_MAX_HOPS = 40


class ImageTree:
    """The files of an image as its container sees them.

    Layers are added bottom first; OCI whiteouts (``.wh.<name>``) and
    opaque directories (``.wh..wh..opq``) hide what lower layers hold.
    Each path maps to ``(layer, TocEntry)``; `layer` is whatever the
    caller passed to `add_layer` (for example the layer digest).
    """

    def __init__(self):
        self.nodes = {"": (None, _DIR)}
        self.children = {"": {}}
        self._by_layer = {}

    def add_layer(self, layer, entries):
        paths = {}
        for e in entries:
            if ".." in e.name.split("/"):
                raise FormatError("TOC entry %r escapes the root" % e.name)
            paths[clean_path(e.name)] = e
        self._by_layer[layer] = paths
        for path in paths:
            self._apply_whiteout(path)
        for path, e in paths.items():
            if path and not posixpath.basename(path).startswith(".wh."):
                self._put(path, (layer, e))

    def _apply_whiteout(self, path):
        parent, base = posixpath.split(path)
        if base == ".wh..wh..opq":
            for name in list(self.children.get(parent, ())):
                self._remove(posixpath.join(parent, name))
        elif base.startswith(".wh."):
            self._remove(posixpath.join(parent, base[4:]))

    def _remove(self, path):
        if path not in self.nodes:
            return
        for name in list(self.children.get(path, ())):
            self._remove(posixpath.join(path, name))
        del self.nodes[path]
        self.children.pop(path, None)
        parent, base = posixpath.split(path)
        self.children[parent].pop(base, None)

    def _put(self, path, node):
        parent, base = posixpath.split(path)
        above = self.nodes.get(parent)
        if above is None or above[1].type != "dir":
            # An upper layer may name a file below a directory it does
            # not list, or put a directory where a lower layer had a file.
            self._put(parent, (node[0], _DIR))
        old = self.nodes.get(path)
        if old is not None and not (old[1].type == node[1].type == "dir"):
            self._remove(path)
        self.nodes[path] = node
        self.children[parent][base] = None
        if node[1].type == "dir":
            self.children.setdefault(path, {})

    def resolve(self, path, follow=True):
        """The (layer, entry) at `path`, following symlinks in the image."""
        return self.nodes[self.locate(path, follow)]

    def locate(self, path, follow=True):
        """The key in `nodes` that `path` leads to, symlinks followed."""
        parts = [p for p in path.split("/") if p not in ("", ".")]
        cur, hops = "", 0
        while parts:
            name = parts.pop(0)
            if name == "..":
                cur = posixpath.dirname(cur)
                continue
            nxt = posixpath.join(cur, name) if cur else name
            node = self.nodes.get(nxt)
            if node is None:
                raise FileNotFoundError(path)
            entry = node[1]
            if entry.type == "symlink" and (parts or follow):
                hops += 1
                if hops > _MAX_HOPS:
                    raise SociError("too many symbolic links in %r" % path)
                target = entry.linkname
                parts = [p for p in target.split("/")
                         if p not in ("", ".")] + parts
                cur = "" if target.startswith("/") else cur
                continue
            if parts and entry.type != "dir":
                raise NotADirectoryError(path)
            cur = nxt
        return cur

    def listdir(self, path):
        """[(name, layer, entry)] of a directory, sorted by name."""
        key = self.locate(path)
        layer, entry = self.nodes[key]
        if entry.type != "dir":
            return [(posixpath.basename(key), layer, entry)]
        names = sorted(self.children.get(key, ()))
        return [(n, *self.nodes[posixpath.join(key, n)]) for n in names]

    def data_entry(self, layer, entry):
        """The entry whose bytes a hardlink stands for (itself otherwise)."""
        if entry.type != "hardlink":
            return entry
        target = self._by_layer[layer].get(clean_path(entry.linkname))
        if target is None or target.type != "reg":
            raise FormatError("hardlink %r points to %r, which its layer "
                              "lacks" % (entry.name, entry.linkname))
        return target
