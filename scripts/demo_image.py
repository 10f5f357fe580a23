"""Push the demo image: busybox plus three data layers, like a model image.

  python scripts/demo_image.py HOST/REPO:TAG

Layer 1 holds a static busybox and its applet links; layers 2-4 hold
sixteen 4 MiB files each, half random and half zeros (weights and
padding), so each gzips to about 32 MB.  Uses the test image builder.
"""
# Copyright 2026 The Hermes authors. SPDX-License-Identifier: Apache-2.0

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import testimages  # noqa: E402

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "ls", "cat", "sha256sum", "wc", "head")


def busybox_layer():
    with open(BUSYBOX, "rb") as f:
        entries = [testimages.Entry("bin/", type="dir", mode=0o755),
                   testimages.Entry("bin/busybox", f.read(), mode=0o755)]
    entries += [testimages.Entry("bin/" + name, type="symlink",
                                 linkname="busybox") for name in APPLETS]
    return testimages.gzip_layer(testimages.tar_layer(entries))


def data_layer(n):
    entries = [testimages.Entry("data/l%d/" % n, type="dir", mode=0o755)]
    for i in range(16):
        half = testimages.random_bytes(2 << 20, n * 100 + i)
        entries.append(testimages.Entry(
            "data/l%d/f%04d.bin" % (n, i), half + bytes(len(half))))
    return testimages.gzip_layer(testimages.tar_layer(entries), level=1)


def main(argv):
    ref = argv[1]
    host, _, rest = ref.partition("/")
    repo, _, tag = rest.partition(":")
    layers = [busybox_layer()] + [data_layer(n) for n in (1, 2, 3)]
    pushed = testimages.push_image(host, repo, tag or "latest", layers)
    size = sum(size for _, size, _ in pushed["layers"])
    print("pushed %s: %d layers, %.1f MB compressed" % (
        ref, len(layers), size / 1e6))


if __name__ == "__main__":
    main(sys.argv)
