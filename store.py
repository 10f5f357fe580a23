"""Hermes' artifact store: the ztocs and SOCI indexes built for images.

Blobs live content-addressed under ``blobs/sha256/<hex>``, written
atomically and checked on every read.  A small sqlite3 database
(``hermes.db``) remembers which ztoc each layer got (per span size) and
which index each image got (per platform), with when and how the build
ended, so the controller can report status after a restart.
`build_image` reads each layer of an image once, through `registry`,
and fills the store; the command line and the controller share it.
Limits: one writer process at a time (sqlite serialises the rest).
"""
# Copyright 2026 The Hermes authors. SPDX-License-Identifier: Apache-2.0

import contextlib
import hashlib
import logging
import os
import sqlite3
import tempfile
import time

import soci

__version__ = "0.1.0"
__all__ = ["StoreError", "Store", "LayerResult", "BuildResult",
           "build_image", "image_tree"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS layers (
    layer_digest TEXT NOT NULL,
    span_size INTEGER NOT NULL,
    ztoc_digest TEXT,
    outcome TEXT NOT NULL,
    error TEXT,
    built_at REAL NOT NULL,
    PRIMARY KEY (layer_digest, span_size));
CREATE TABLE IF NOT EXISTS images (
    manifest_digest TEXT NOT NULL,
    platform TEXT NOT NULL,
    reference TEXT NOT NULL,
    index_digest TEXT,
    outcome TEXT NOT NULL,
    error TEXT,
    built_at REAL NOT NULL,
    PRIMARY KEY (manifest_digest, platform));
"""


class StoreError(Exception):
    """The store is unusable, or a blob in it is missing or corrupt."""


def _hex(digest):
    algorithm, _, hexpart = digest.partition(":")
    ok = algorithm == "sha256" and len(hexpart) == 64 and all(
        c in "0123456789abcdef" for c in hexpart)
    if not ok:
        raise StoreError("not a sha256 digest: %r" % digest[:80])
    return hexpart


class Store:
    """A store rooted at a directory, created on first use."""

    def __init__(self, root):
        self.root = os.path.abspath(root)
        self.blobs = os.path.join(self.root, "blobs", "sha256")
        self.db_path = os.path.join(self.root, "hermes.db")
        self._ready = False

    def _prepare(self):
        if not self._ready:
            os.makedirs(self.blobs, exist_ok=True)
            with self._db() as db:
                db.executescript(_SCHEMA)
            self._ready = True

    @contextlib.contextmanager
    def _db(self):
        db = sqlite3.connect(self.db_path, timeout=30)
        db.row_factory = sqlite3.Row
        try:
            with db:
                yield db
        finally:
            db.close()

    # -- blobs

    def path(self, digest):
        return os.path.join(self.blobs, _hex(digest))

    def has(self, digest):
        return os.path.exists(self.path(digest))

    def put(self, data):
        """Store `data`; return its digest.  Safe against crashes.

        A blob already present is kept only if its bytes are intact, so
        building again repairs a corrupt one.
        """
        self._prepare()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        final = self.path(digest)
        if self._intact(final, digest):
            return digest
        fd, tmp = tempfile.mkstemp(dir=self.blobs, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return digest

    def _intact(self, path, digest):
        try:
            with open(path, "rb") as f:
                return "sha256:" + hashlib.file_digest(
                    f, "sha256").hexdigest() == digest
        except FileNotFoundError:
            return False

    def get(self, digest):
        """The blob's bytes, verified against `digest`."""
        try:
            with open(self.path(digest), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise StoreError("blob %s is not in the store %s"
                             % (digest, self.root)) from None
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise StoreError("blob %s in %s is corrupt (its bytes hash to "
                             "%s); delete it and build again"
                             % (digest, self.root, actual))
        return data

    # -- what was built

    def record_layer(self, layer_digest, span_size, ztoc_digest, outcome,
                     error=None):
        self._prepare()
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO layers VALUES (?, ?, ?, ?, ?, ?)",
                (layer_digest, span_size, ztoc_digest, outcome, error,
                 time.time()))

    def layer(self, layer_digest, span_size):
        """The layer's row, or None; only rows whose ztoc is present."""
        self._prepare()
        with self._db() as db:
            row = db.execute(
                "SELECT * FROM layers WHERE layer_digest = ? AND "
                "span_size = ?", (layer_digest, span_size)).fetchone()
        if row and row["ztoc_digest"] and not self.has(row["ztoc_digest"]):
            return None
        return row

    def record_image(self, manifest_digest, platform, reference,
                     index_digest, outcome, error=None):
        self._prepare()
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO images VALUES "
                "(?, ?, ?, ?, ?, ?, ?)",
                (manifest_digest, platform, reference, index_digest,
                 outcome, error, time.time()))

    def image(self, manifest_digest, platform):
        self._prepare()
        with self._db() as db:
            return db.execute(
                "SELECT * FROM images WHERE manifest_digest = ? AND "
                "platform = ?", (manifest_digest, platform)).fetchone()

    def images(self):
        self._prepare()
        with self._db() as db:
            return db.execute(
                "SELECT * FROM images ORDER BY built_at").fetchall()


# ------------------------------------------------------------ building

class LayerResult:
    """What became of one layer: its ztoc, or why it has none."""

    def __init__(self, descriptor, outcome, ztoc_digest=None,
                 ztoc_size=0, reason=None):
        self.descriptor = descriptor
        self.outcome = outcome
        self.ztoc_digest = ztoc_digest
        self.ztoc_size = ztoc_size
        self.reason = reason

    @property
    def digest(self):
        return self.descriptor["digest"]


class BuildResult:
    """The layers of one image and the index made from them, if any."""

    def __init__(self, image, layers, index_digest):
        self.image = image
        self.layers = layers
        self.index_digest = index_digest


class _Counted:
    """Counts the bytes read through a stream, for progress reports."""

    def __init__(self, stream, report):
        self.stream = stream
        self.report = report
        self.done = 0

    def readinto(self, buf):
        n = self.stream.readinto(buf)
        if n:
            self.done += n
            self.report(self.done)
        return n


def _cached_layer(store, desc, span_size):
    """The layer's earlier result, if its ztoc is still intact."""
    row = store.layer(desc["digest"], span_size)
    if row is None:
        return None
    if row["outcome"] == "unsupported":
        return LayerResult(desc, "unsupported", reason=row["error"])
    try:
        size = len(store.get(row["ztoc_digest"]))
    except StoreError as e:
        log.warning("rebuilding the ztoc of layer %s: %s",
                    desc["digest"], e)
        return None
    return LayerResult(desc, "cached", row["ztoc_digest"], size)


def _layer_ztoc(client, store, image, desc, span_size, report):
    """Reuse the layer's ztoc from the store, or read the layer once."""
    digest = desc["digest"]
    cached = _cached_layer(store, desc, span_size)
    if cached is not None:
        return cached
    try:
        compression = soci.compression_of(desc.get("mediaType", ""))
        if compression is None:
            raise soci.UnsupportedLayer(
                "media type %r is not a layer" % desc.get("mediaType"))
        with client.open_blob(image.ref, digest) as blob:
            ztoc = soci.build_ztoc(_Counted(blob, report), compression,
                                   span_size)
    except soci.UnsupportedLayer as e:
        log.info("layer %s of %s gets no ztoc: %s", digest, image.ref, e)
        store.record_layer(digest, span_size, None, "unsupported", str(e))
        return LayerResult(desc, "unsupported", reason=str(e))
    data = ztoc.to_bytes()
    ztoc_digest = store.put(data)
    store.record_layer(digest, span_size, ztoc_digest, "built")
    log.info("built ztoc %s for layer %s (%d spans, %d entries)",
             ztoc_digest, digest, ztoc.span_count, len(ztoc.entries))
    return LayerResult(desc, "built", ztoc_digest, len(data))


def build_image(client, store, image, span_size=soci.SPAN_SIZE,
                min_layer_size=soci.MIN_LAYER_SIZE, index_version=2,
                progress=None):
    """Give every layer of `image` a ztoc and the image a SOCI index.

    `image` comes from ``registry.Client.resolve_image``.  Layers already
    in the store are not read again.  Layers smaller than
    `min_layer_size` keep their ztoc in the store (for ``ls`` and
    ``cat``) but are left out of the index, as soci-snapshotter does.
    `progress(i, count, descriptor, done_bytes)` is called while reading.
    """
    results = []
    try:
        for i, desc in enumerate(image.layers):
            def report(done, i=i, desc=desc):
                if progress:
                    progress(i, len(image.layers), desc, done)
            results.append(_layer_ztoc(client, store, image, desc,
                                       span_size, report))
    except Exception as e:
        store.record_image(image.digest, image.platform, str(image.ref),
                           None, "failed", str(e))
        raise
    index_digest = _write_index(store, image, results, span_size,
                                min_layer_size, index_version)
    return BuildResult(image, results, index_digest)


def _write_index(store, image, results, span_size, min_size, version):
    ztocs = [soci.ztoc_descriptor(r.descriptor, r.ztoc_digest,
                                  r.ztoc_size, span_size)
             for r in results
             if r.ztoc_digest and r.descriptor["size"] >= min_size]
    if not ztocs:
        store.record_image(image.digest, image.platform, str(image.ref),
                           None, "empty",
                           "no layer is at least %d bytes" % min_size)
        return None
    subject = None
    if version == 1:
        subject = {"mediaType": image.media_type, "digest": image.digest,
                   "size": len(image.data)}
    digest = store.put(soci.build_index(ztocs, subject, version))
    store.record_image(image.digest, image.platform, str(image.ref),
                       digest, "built")
    return digest


def image_tree(store, image, span_size=soci.SPAN_SIZE):
    """The merged `soci.ImageTree` of an image and its layers' ztocs.

    Raises StoreError when a layer has no ztoc in the store (never
    built, or not indexable).
    """
    tree, ztocs = soci.ImageTree(), {}
    for desc in image.layers:
        row = store.layer(desc["digest"], span_size)
        if row is None or not row["ztoc_digest"]:
            why = row["error"] if row is not None else "not built yet"
            raise StoreError("layer %s has no ztoc: %s"
                             % (desc["digest"], why))
        ztoc = soci.Ztoc.from_bytes(store.get(row["ztoc_digest"]))
        ztocs[desc["digest"]] = ztoc
        tree.add_layer(desc["digest"], ztoc.entries)
    return tree, ztocs
