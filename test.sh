#!/bin/bash
# Run the Hermes test suite: ./test.sh [pytest arguments...]
#
# Does everything a fresh Debian 12 machine needs: installs missing
# packages and the venv (scripts/setup.sh), starts the test registries
# (scripts/env-up.sh), runs pytest, and always stops what it started
# (scripts/env-down.sh).  State goes under $BASE (default /tmp/hermes-test).
# Exits with pytest's status; "no tests collected" (5) counts as failure.
set -eu

cd "$(dirname "$0")"
export BASE=${BASE:-/tmp/hermes-test}

# Keep the suite's status unless teardown itself fails, which must not
# go unnoticed either.
teardown() {
    local rc=$?
    if ! scripts/env-down.sh; then
        echo "test.sh: env-down.sh failed" >&2
        [ "$rc" -ne 0 ] || rc=1
    fi
    exit "$rc"
}

scripts/setup.sh
# env-up cleans up after itself when it fails, and refuses to touch an
# environment that is already running; so tear down only once it is up.
scripts/env-up.sh
trap teardown EXIT
# Turn SIGINT/SIGTERM into a normal exit so the EXIT trap runs.
trap 'exit 130' INT
trap 'exit 143' TERM

# shellcheck disable=SC1091  # written by env-up.sh
. "$BASE/env"

rc=0
.venv/bin/python -m pytest -q "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests" >&2
fi
exit "$rc"
