"""Index build throughput against plain zlib inflate of the same layer.

Generates a gzip layer of several hundred MB (files half random, half
zeros, like model weights and padding), then times, in alternating child
processes so each gets its own peak-memory figure:

  inflate  zlib.decompressobj over the blob, output discarded (baseline)
  build    soci.build_ztoc over the same blob, plus writing the ztoc

and prints the median of each, the ratio build/inflate (goal >= 0.8) and
each child's peak resident memory (goal for build: under 100 MB).

  python bench/build_bench.py [--size-mib 400] [--rounds 3]
"""
# Copyright 2026 The Hermes authors. SPDX-License-Identifier: Apache-2.0

import argparse
import io
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

CHUNK = 1 << 18
FILE_MIB = 8


def weight_files(size_mib, rng):
    """8 MiB files, half random and half zeros, like weights and padding."""
    for i in range(size_mib // FILE_MIB):
        half = FILE_MIB << 19
        yield "models/shard-%04d.bin" % i, rng.randbytes(half) + bytes(half)


def source_files(size_mib, rng):
    """Many small text-like files, like a Python environment."""
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz_", k=n))
             for n in rng.choices(range(2, 12), k=4096)]
    pool = b" ".join(rng.choices(words, k=400_000)) + b"\n"
    left, i = size_mib << 20, 0
    while left > 0:
        n = min(left, rng.randint(512, 16384))
        at = rng.randrange(len(pool) - n)
        yield "lib/pkg%03d/mod%05d.py" % (i % 500, i), pool[at:at + n]
        left -= n
        i += 1


PROFILES = {"weights": weight_files, "sources": source_files}


def make_layer(path, profile, size_mib):
    rng = random.Random(1)
    tar_path = path + ".tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in PROFILES[profile](size_mib, rng):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    compress(tar_path, path)
    os.unlink(tar_path)


def compress(src, dst):
    if shutil.which("pigz"):
        with open(dst, "wb") as out:
            subprocess.run(["pigz", "-6", "-c", src], stdout=out, check=True)
        return
    deflate = zlib.compressobj(6, zlib.DEFLATED, 31)
    with open(src, "rb") as f, open(dst, "wb") as out:
        while chunk := f.read(CHUNK):
            out.write(deflate.compress(chunk))
        out.write(deflate.flush())


def run_inflate(path):
    inflater = zlib.decompressobj(47)
    total = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            total += len(inflater.decompress(chunk))
    return total + len(inflater.flush())


def run_build(path):
    import soci
    with open(path, "rb", buffering=0) as f:
        ztoc = soci.build_ztoc(f, "gzip")
    return len(ztoc.to_bytes())


def child(kind, path):
    """Run one measurement in this process and print it as JSON."""
    start = time.perf_counter()
    result = {"inflate": run_inflate, "build": run_build}[kind](path)
    elapsed = time.perf_counter() - start
    print(json.dumps({"seconds": elapsed, "peak_mb": peak_mb(),
                      "result": result}))


def peak_mb():
    """This process's peak resident memory (VmHWM, reset at exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(kind, path):
    out = subprocess.run([sys.executable, __file__, "--child", kind, path],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=400)
    parser.add_argument("--profile", choices=sorted(PROFILES),
                        action="append",
                        help="layer kind (default: both)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="/tmp/hermes-bench")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(*args.child)

    os.makedirs(args.dir, exist_ok=True)
    for profile in args.profile or sorted(PROFILES, reverse=True):
        path = os.path.join(args.dir, "%s-%dMiB.tar.gz" % (
            profile, args.size_mib))
        if not os.path.exists(path):
            print("generating %s ..." % path, file=sys.stderr)
            make_layer(path, profile, args.size_mib)
        runs = {"inflate": [], "build": []}
        for _ in range(args.rounds):
            for kind in runs:
                runs[kind].append(measure(kind, path))
        print("== %s" % profile)
        report(runs, os.path.getsize(path) / 1e6, args.size_mib)


def report(runs, blob_mb, size_mib):
    median = {k: statistics.median(r["seconds"] for r in v)
              for k, v in runs.items()}
    peak = {k: max(r["peak_mb"] for r in v) for k, v in runs.items()}
    print("layer: %.1f MB gzip, %d MiB tar" % (blob_mb, size_mib))
    for kind in runs:
        print("%-8s median %.2f s  %.1f MB/s compressed  peak %.1f MB" % (
            kind, median[kind], blob_mb / median[kind], peak[kind]))
    ratio = median["inflate"] / median["build"]
    print("build speed / plain inflate speed: %.2f (goal >= 0.8)" % ratio)
    print("build peak memory: %.1f MB (goal < 100 MB)" % peak["build"])


if __name__ == "__main__":
    main()
