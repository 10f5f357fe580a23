#!/bin/bash
# Hermes demo: index an image in a real registry, then read files from it
# fetching only the spans that hold them.  Sets up everything it needs on
# a fresh Debian 12 machine (packages, venv, a local registry) and stops
# what it started.  State goes under $BASE (default /tmp/hermes-demo).
set -eu

cd "$(dirname "$0")"
export BASE=${BASE:-/tmp/hermes-demo}

scripts/setup.sh
scripts/env-up.sh
trap scripts/env-down.sh EXIT
# shellcheck disable=SC1091  # written by env-up.sh
. "$BASE/env"

ref=$HERMES_TEST_REGISTRY/demo/model-server:v1
store=$BASE/store
rm -rf "$store"
hermes() { .venv/bin/python hermes.py "$@"; }
step() { printf '\n\033[1m$ hermes %s\033[0m\n' "$*"; }

.venv/bin/python scripts/demo_image.py "$ref"

step build "$ref"
time hermes build "$ref" --store "$store"

step inspect "$ref"
hermes inspect "$ref" --store "$store"

step ls "$ref" /data/l3
hermes ls "$ref" /data/l3 --store "$store" | head -5

step cat "$ref" /bin/sh '| sha256sum'
hermes cat "$ref" /bin/sh --store "$store" | sha256sum
sha256sum /bin/busybox

step cat "$ref" /data/l3/f0015.bin '| wc -c'
hermes cat "$ref" /data/l3/f0015.bin --store "$store" | wc -c
