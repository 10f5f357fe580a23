#!/bin/bash
# Install what the Hermes tests need on Debian 12; safe to run repeatedly.
#
# Changes: installs missing Debian packages (apt, needs root) and creates
# or refreshes ./.venv from requirements.txt.  Nothing is started.
# Usage: scripts/setup.sh
set -eu

cd "$(dirname "$0")/.."

# golang-go: Go's archive/tar, the reference test_tar_compat.py compares with.
PACKAGES="docker-registry pigz busybox-static apache2-utils openssl curl tar
          golang-go"

# Debian's python3 cannot create a venv (no ensurepip) without python3-venv;
# other pythons (pyenv, python.org builds) bring their own.
need_venv_package() {
    ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1
}

missing_packages() {
    local pkg
    for pkg in $PACKAGES; do
        # Only name missing packages: naming installed ones makes apt
        # upgrade them.
        dpkg -s "$pkg" >/dev/null 2>&1 || echo "$pkg"
    done
    if need_venv_package; then
        dpkg -s python3-venv >/dev/null 2>&1 || echo python3-venv
    fi
}

install_packages() {
    local missing
    missing=$(missing_packages)
    if [ -z "$missing" ]; then
        return 0
    fi
    echo "setup: installing" $missing
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086  # word splitting wanted: one arg a package
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# pip is slow even when there is nothing to do, so skip it while
# requirements.txt is the one the venv was last filled from.
setup_venv() {
    local stamp=.venv/.requirements.sha256 want
    if [ ! -x .venv/bin/python ]; then
        echo "setup: creating .venv"
        python3 -m venv .venv
    fi
    want=$(sha256sum requirements.txt | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    echo "setup: pip install -r requirements.txt"
    .venv/bin/python -m pip install -q --disable-pip-version-check \
        -r requirements.txt
    echo "$want" >"$stamp"
}

install_packages
setup_venv
