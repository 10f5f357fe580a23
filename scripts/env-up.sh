#!/bin/bash
# Start three throwaway docker-registry instances on loopback for tests.
#
#   127.0.0.1:5000  plain HTTP, no auth
#   127.0.0.1:5001  plain HTTP, Basic auth (test / testpass, bcrypt)
#   127.0.0.1:5443  HTTPS (self-signed, CA = $BASE/registry/tls.crt) + auth
#
# All three share one storage root, so an image pushed to one is visible
# through the others.  State lives under $BASE (default /tmp/hermes-test;
# keep it short, unix socket paths must stay under 108 bytes).  PIDs go to
# $BASE/pids/<name>, logs to $BASE/logs/<name>.log, and $BASE/env gets the
# HERMES_TEST_* variables to source.  Stop everything with env-down.sh.
# PLAIN_PORT, AUTH_PORT and TLS_PORT move the registries, e.g. when a
# second environment must run beside the first (use another BASE too).
# Usage: BASE=/tmp/hermes-test scripts/env-up.sh
set -eu

SCRIPTS=$(cd "$(dirname "$0")" && pwd)
BASE=${BASE:-/tmp/hermes-test}
REG=$BASE/registry
READY_TIMEOUT_S=15
USER_NAME=test
USER_PASSWORD=testpass

PLAIN=127.0.0.1:${PLAIN_PORT:-5000}
AUTH=127.0.0.1:${AUTH_PORT:-5001}
TLS=127.0.0.1:${TLS_PORT:-5443}

# Name, address, expected /v2/ status, extra config; one line each.
REGISTRIES="plain $PLAIN 200 -
auth $AUTH 401 auth
tls $TLS 401 auth,tls"

die() {
    echo "env-up: $*" >&2
    exit 1
}

# A pid file whose process is alive belongs to a running environment that
# someone else may be using: refuse rather than kill it.  Dead ones are
# leftovers of a crash and are just removed.
check_no_live_env() {
    local f pid
    for f in "$BASE"/pids/*; do
        [ -e "$f" ] || continue
        pid=$(cat "$f")
        if kill -0 "$pid" 2>/dev/null; then
            die "$f: pid $pid is running; run scripts/env-down.sh first"
        fi
        rm -f "$f"
    done
}

# Something else on our port would answer the readiness poll in place of
# our registry, so make sure nothing listens there (curl exit 7: refused).
check_port_free() {
    local addr=$1 rc=0
    curl -s -o /dev/null --max-time 2 "http://$addr/" || rc=$?
    [ "$rc" -eq 7 ] || die "$addr is already in use"
}

make_credentials() {
    # Regenerate the certificate only when missing or expiring in a day.
    if ! openssl x509 -checkend 86400 -noout -in "$REG/tls.crt" \
        >/dev/null 2>&1; then
        openssl req -x509 -newkey rsa:2048 -nodes -days 30 \
            -keyout "$REG/tls.key" -out "$REG/tls.crt" \
            -subj /CN=127.0.0.1 \
            -addext 'subjectAltName=IP:127.0.0.1,DNS:localhost' \
            >/dev/null 2>&1 || die "openssl could not create a certificate"
    fi
    # distribution only accepts bcrypt hashes (-B).
    htpasswd -Bbn "$USER_NAME" "$USER_PASSWORD" >"$REG/htpasswd"
}

# Config files do not expand variables, so write real paths into them.
write_config() {
    local name=$1 addr=$2 extra=$3 conf=$REG/$1.yml
    {
        echo "version: 0.1"
        echo "log: {level: warn, accesslog: {disabled: true}}"
        echo "storage:"
        echo "  filesystem: {rootdirectory: $REG/data}"
        echo "  delete: {enabled: true}"
        echo "http:"
        echo "  addr: $addr"
        # A fixed secret avoids the random-secret warning.
        echo "  secret: hermes-test-secret"
        case $extra in *tls*)
            echo "  tls: {certificate: $REG/tls.crt, key: $REG/tls.key}"
        esac
        case $extra in *auth*)
            echo "auth: {htpasswd: {realm: test-realm, path: $REG/htpasswd}}"
        esac
    } >"$conf"
}

start_registry() {
    local name=$1
    docker-registry serve "$REG/$name.yml" >"$BASE/logs/$name.log" 2>&1 &
    echo $! >"$BASE/pids/$name"
}

fail_start() {
    local name=$1
    echo "env-up: registry $name did not become ready; its log:" >&2
    cat "$BASE/logs/$name.log" >&2
    "$SCRIPTS/env-down.sh" >&2
    exit 1
}

# Poll /v2/ until it answers with the status an idle registry gives.
wait_ready() {
    local name=$1 addr=$2 want=$3 scheme=http
    local pid deadline code
    pid=$(cat "$BASE/pids/$name")
    set -- --max-time 2 -s -o /dev/null -w '%{http_code}'
    if [ "$name" = tls ]; then
        scheme=https
        set -- "$@" --cacert "$REG/tls.crt"
    fi
    deadline=$((SECONDS + READY_TIMEOUT_S))
    while [ "$SECONDS" -lt "$deadline" ]; do
        code=$(curl "$@" "$scheme://$addr/v2/" || true)
        [ "$code" = "$want" ] && return 0
        # A registry that exited (bad config, port taken) never answers.
        kill -0 "$pid" 2>/dev/null || fail_start "$name"
        sleep 0.1
    done
    fail_start "$name"
}

write_env() {
    cat >"$BASE/env" <<ENV
export HERMES_TEST_REGISTRY=$PLAIN
export HERMES_TEST_REGISTRY_AUTH=$AUTH
export HERMES_TEST_REGISTRY_TLS=$TLS
export HERMES_TEST_CA='$REG/tls.crt'
export HERMES_TEST_USER=$USER_NAME
export HERMES_TEST_PASSWORD=$USER_PASSWORD
ENV
}

main() {
    local name addr want extra
    case $BASE in /*) ;; *) die "BASE must be absolute: $BASE" ;; esac
    mkdir -p "$BASE/pids" "$BASE/logs" "$REG"
    check_no_live_env
    # Storage is throwaway: every environment starts empty.
    rm -rf "$REG/data"
    mkdir -p "$REG/data"
    make_credentials

    # Check every port before starting anything, so a refusal leaves
    # nothing running.
    while read -r name addr want extra; do
        check_port_free "$addr"
        write_config "$name" "$addr" "$extra"
    done <<<"$REGISTRIES"
    # Interrupted half way, leave nothing running.
    trap '"$SCRIPTS/env-down.sh"; exit 130' INT
    trap '"$SCRIPTS/env-down.sh"; exit 143' TERM
    while read -r name addr want extra; do
        start_registry "$name"
    done <<<"$REGISTRIES"
    while read -r name addr want extra; do
        wait_ready "$name" "$addr" "$want"
    done <<<"$REGISTRIES"

    write_env
    echo "env-up: registries ready; source $BASE/env"
}

main
