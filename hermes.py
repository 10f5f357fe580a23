"""hermes: build SOCI indexes for any OCI image and read files through them.

  hermes build REF      index every layer once, print the index digest
  hermes ztoc FILE      build the ztoc of a local layer blob
  hermes ls REF [PATH]  list a directory of the image from its ztocs
  hermes cat REF PATH   print one file, fetching only the spans it needs
  hermes inspect REF|ZTOC_FILE   summarise an index or a ztoc

Composes `registry` (the OCI client), `soci` (ztocs and indexes) and
`store` (where they are kept).  Exit status: 0 on success, 1 on an error
(one line on stderr), 2 on a usage error.
"""
# Copyright 2026 The Hermes authors. SPDX-License-Identifier: Apache-2.0

import argparse
import hashlib
import json
import logging
import os
import stat
import sys
import time

import registry
import soci
import store as store_mod

__version__ = "0.1.0"
__all__ = ["main"]

log = logging.getLogger("hermes")

# Flags win over these environment variables, which win over defaults.
ENV_STORE = "HERMES_STORE"
ENV_AUTH_FILE = "HERMES_AUTH_FILE"
ENV_CA_FILE = "HERMES_CA_FILE"
DEFAULT_STORE = "./hermes-store"

_MODE_BITS = {
    "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "char": stat.S_IFCHR,
    "block": stat.S_IFBLK, "fifo": stat.S_IFIFO,
}


class CommandError(Exception):
    """An error to report in one line and exit 1."""


# ------------------------------------------------------------ helpers

def _client(args, ref):
    keychain = registry.Keychain.from_docker_config(args.auth_file)
    insecure = (ref.registry,) if args.insecure else ()
    return registry.Client(keychain=keychain, insecure=insecure,
                           ca_file=args.ca_file)


def _resolve(args):
    ref = registry.parse_reference(args.ref)
    client = _client(args, ref)
    image = client.resolve_image(ref, args.platform)
    return client, image


class _Progress:
    """Shows layer, bytes and MB/s on stderr when it is a terminal."""

    def __init__(self, enabled):
        self.enabled = enabled
        self.started = {}
        self.shown = 0.0

    def __call__(self, i, count, desc, done):
        if not self.enabled:
            return
        now = time.monotonic()
        start = self.started.setdefault(i, now)
        if now - self.shown < 0.2 and done < desc["size"]:
            return
        self.shown = now
        rate = done / max(now - start, 1e-6) / 1e6
        sys.stderr.write("\rlayer %d/%d %s  %.1f/%.1f MB  %.1f MB/s " % (
            i + 1, count, desc["digest"][7:19], done / 1e6,
            desc["size"] / 1e6, rate))
        if done >= desc["size"]:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _build(args, client, image, store, index_version=2):
    return store_mod.build_image(
        client, store, image, span_size=args.span_size,
        min_layer_size=args.min_layer_size, index_version=index_version,
        progress=_Progress(sys.stderr.isatty()))


def _ensure_built(args, client, image, store):
    """Build the image's ztocs unless the store has all of them."""
    missing = [d for d in image.layers
               if store.layer(d["digest"], args.span_size) is None]
    if missing:
        log.info("building ztocs for %s (%d layers missing)", image.ref,
                 len(missing))
        _build(args, client, image, store)


def _mode_string(entry, data_entry):
    kind = _MODE_BITS.get(entry.type, stat.S_IFREG)
    return stat.filemode(kind | (data_entry.mode & 0o7777))


def _ls_line(name, entry, data_entry):
    when = entry.mod_time[:16].replace("T", " ")
    size = data_entry.size if data_entry.type == "reg" else 0
    shown = name + ("/" if entry.type == "dir" else "")
    if entry.type == "symlink":
        shown += " -> " + entry.linkname
    return "%s %5d/%-5d %12d %s %s" % (
        _mode_string(entry, data_entry), entry.uid, entry.gid, size,
        when, shown)


# ------------------------------------------------------------ commands

def cmd_build(args):
    client, image = _resolve(args)
    store = store_mod.Store(args.store)
    result = _build(args, client, image, store, args.index_version)
    for r in result.layers:
        if r.outcome == "unsupported":
            print("hermes: warning: layer %s has no ztoc: %s"
                  % (r.digest, r.reason), file=sys.stderr)
    if result.index_digest is None:
        raise CommandError(
            "no layer of %s is %d bytes or more; nothing to index "
            "(see --min-layer-size)" % (image.ref, args.min_layer_size))
    print(result.index_digest)


def cmd_ztoc(args):
    with open(args.layer_file, "rb") as f:
        compression = soci.sniff_compression(f.read(4))
        f.seek(0)
        ztoc = soci.build_ztoc(f, compression, args.span_size)
    data = ztoc.to_bytes()
    if args.output:
        with open(args.output, "wb") as out:
            out.write(data)
    else:
        store = store_mod.Store(args.store)
        store.put(data)
    print("sha256:" + hashlib.sha256(data).hexdigest())


def _image_view(args):
    """Resolve the image, build what the store lacks, merge the layers."""
    client, image = _resolve(args)
    store = store_mod.Store(args.store)
    _ensure_built(args, client, image, store)
    tree, ztocs = store_mod.image_tree(store, image, args.span_size)
    return client, image, tree, ztocs


def cmd_ls(args):
    _, image, tree, _ = _image_view(args)
    try:
        listing = tree.listdir(args.path)
    except (FileNotFoundError, NotADirectoryError):
        raise CommandError("%s: no such file or directory in %s"
                           % (args.path, image.ref)) from None
    for name, layer, entry in listing:
        print(_ls_line(name, entry, tree.data_entry(layer, entry)))


def cmd_cat(args):
    client, image, tree, ztocs = _image_view(args)
    try:
        layer, entry = tree.resolve(args.path)
    except (FileNotFoundError, NotADirectoryError):
        raise CommandError("%s: no such file in %s"
                           % (args.path, image.ref)) from None
    entry = tree.data_entry(layer, entry)
    if entry.type != "reg":
        raise CommandError("%s is a %s, not a regular file"
                           % (args.path, entry.type))
    ztoc = ztocs[layer]

    def read(offset, length):
        return client.read_range(image.ref, layer, offset, length)

    reader = soci.SpanReader(ztoc, read)
    out = sys.stdout.buffer
    for piece in reader.iter_range(entry.offset, entry.size):
        out.write(piece)
    out.flush()
    print("hermes: fetched %d of %d bytes (%.1f%%) of layer %s" % (
        reader.fetched, ztoc.compressed_size,
        100.0 * reader.fetched / ztoc.compressed_size, layer),
        file=sys.stderr)


def cmd_inspect(args):
    if os.path.isfile(args.target):
        with open(args.target, "rb") as f:
            summary = _ztoc_summary(soci.Ztoc.from_bytes(f.read()))
    else:
        summary = _index_summary(args)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)


def _ztoc_summary(ztoc):
    kinds = {}
    for e in ztoc.entries:
        kinds[e.type] = kinds.get(e.type, 0) + 1
    return {
        "version": ztoc.version, "build_tool": ztoc.build_tool,
        "compression": ztoc.compression,
        "compressed_size": ztoc.compressed_size,
        "uncompressed_size": ztoc.uncompressed_size,
        "span_size": ztoc.span_size, "spans": ztoc.span_count,
        "entries": len(ztoc.entries), "entry_types": kinds,
    }


def _index_summary(args):
    args.ref = args.target
    _, image = _resolve(args)
    store = store_mod.Store(args.store)
    row = store.image(image.digest, image.platform)
    if row is None or not row["index_digest"]:
        raise CommandError("%s has no index in %s; run 'hermes build' "
                           "first" % (image.ref, args.store))
    data = store.get(row["index_digest"])
    doc = soci.parse_index(data)
    layers = []
    for desc in doc["layers"]:
        ann = desc.get("annotations", {})
        layers.append({"layer": ann.get(soci.ANN_LAYER_DIGEST),
                       "ztoc": desc["digest"], "ztoc_size": desc["size"],
                       "span_size": int(ann.get(soci.ANN_SPAN_SIZE, 0))})
    version = 1 if doc["config"]["mediaType"] == soci.INDEX_V1 else 2
    indexed = {z["layer"] for z in layers}
    skipped = [_skipped(store, d, args.span_size) for d in image.layers
               if d["digest"] not in indexed]
    return {"image": str(image.ref), "manifest": image.digest,
            "platform": image.platform, "index": row["index_digest"],
            "index_version": version, "index_size": len(data),
            "image_layers": len(image.layers), "ztocs": layers,
            "skipped": skipped}


def _skipped(store, desc, span_size):
    """Why a layer of the image has no ztoc in its index."""
    row = store.layer(desc["digest"], span_size)
    reason = "smaller than the minimum layer size"
    if row is not None and row["outcome"] == "unsupported":
        reason = row["error"]
    return {"layer": desc["digest"], "size": desc["size"],
            "reason": reason}


def _print_summary(summary):
    for key, value in summary.items():
        if key == "ztocs":
            print("ztocs:")
            for z in value:
                print("  layer %s  ztoc %s  %d bytes" % (
                    z["layer"], z["ztoc"], z["ztoc_size"]))
        elif key == "skipped":
            print("skipped:" if value else "skipped: none")
            for s in value:
                print("  layer %s  %d bytes: %s" % (
                    s["layer"], s["size"], s["reason"]))
        else:
            print("%s: %s" % (key, value))


# ------------------------------------------------------------- parser

def _size(text):
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % text) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive: %r" % text)
    return value


def _parser():
    parser = argparse.ArgumentParser(
        prog="hermes", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version",
                        version="hermes " + __version__)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log what is fetched and built")
    sub = parser.add_subparsers(dest="command", required=True)

    def registry_opts(p):
        p.add_argument("--store", default=os.environ.get(
            ENV_STORE, DEFAULT_STORE), help="artifact store directory")
        p.add_argument("--insecure", action="store_true",
                       help="allow plain HTTP or unverified TLS")
        p.add_argument("--auth-file", default=os.environ.get(
            ENV_AUTH_FILE), help="Docker config.json with credentials")
        p.add_argument("--ca-file", default=os.environ.get(ENV_CA_FILE),
                       help="CA bundle for the registry's TLS")
        p.add_argument("--platform", default=None,
                       help="os/arch[/variant] (default: this host's)")
        p.add_argument("--span-size", type=_size, default=soci.SPAN_SIZE)
        p.add_argument("--min-layer-size", type=_size,
                       default=soci.MIN_LAYER_SIZE)

    p = sub.add_parser("build", help="build the SOCI index of an image")
    p.add_argument("ref")
    registry_opts(p)
    p.add_argument("--index-version", type=int, choices=(1, 2), default=2)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("ztoc", help="build the ztoc of a local layer")
    p.add_argument("layer_file")
    p.add_argument("-o", "--output")
    p.add_argument("--span-size", type=_size, default=soci.SPAN_SIZE)
    p.add_argument("--store", default=os.environ.get(
        ENV_STORE, DEFAULT_STORE))
    p.set_defaults(func=cmd_ztoc)

    p = sub.add_parser("ls", help="list a directory of an image")
    p.add_argument("ref")
    p.add_argument("path", nargs="?", default="/")
    registry_opts(p)
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("cat", help="write one file of an image to stdout")
    p.add_argument("ref")
    p.add_argument("path")
    registry_opts(p)
    p.set_defaults(func=cmd_cat)

    p = sub.add_parser("inspect", help="summarise an index or a ztoc")
    p.add_argument("target", metavar="REF|ZTOC_FILE")
    p.add_argument("--json", action="store_true")
    registry_opts(p)
    p.set_defaults(func=cmd_inspect)
    return parser


def main(argv=None):
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        # argparse exits 2 on usage errors and 0 for --help.
        return e.code
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="hermes: %(levelname)s %(name)s: %(message)s")
    errors = (CommandError, registry.RegistryError, soci.SociError,
              store_mod.StoreError, OSError)
    try:
        args.func(args)
    except BrokenPipeError:
        # `hermes cat ... | head` closing the pipe early is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except errors as e:
        print("hermes: error: %s" % _one_line(e), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hermes: interrupted", file=sys.stderr)
        return 130
    return 0


def _one_line(error):
    text = str(error) or type(error).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
