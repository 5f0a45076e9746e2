#!/usr/bin/env bash
# The proxy benchmark of issue 12 (relay/README.md, "Through the entry proxy"): builds the
# shipped RELAYWS appliance (bundles/relayws.toml) under another stack name, activates it
# with free ports on a state directory under /tmp, issues a client certificate, exports the
# site CA, runs `relay-bench proxy` (the same phases through haproxy with TLS and direct to
# a local relay, in one run), prints the figures, and removes the stack at the end (also on
# failure or Ctrl-C), waiting until it is gone.
# Needs root, dockerd and the Debian archive (the haproxy .debs its lock names).
# Environment: STACK (default benchproxy), STORE (build store, default target/bench-store),
# CARGO_TARGET_DIR (default target), KEEP_DIR=1 to keep the /tmp folder; arguments after the
# script name go to relay-bench (e.g. --idle-pairs 4000 --active 500 --secs 10).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ROOT=$(pwd -P)
STACK=${STACK:-benchproxy}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
STORE=${STORE:-$CARGO_TARGET_DIR/bench-store}

ensure_dockerd
ensure_swarm

echo "== cargo build --release (reemo-bundle, ws-relay-server, relay-bench)" >&2
cargo build --release --locked -p reemo-bundle -p ws-relay-server -p relay-bench >&2
B=$CARGO_TARGET_DIR/release/reemo-bundle
BENCH=$CARGO_TARGET_DIR/release/relay-bench

DIR=$(mktemp -d /tmp/bench-proxy.XXXXXX)
STATE=$DIR/state

# `docker stack rm`, then wait (at most 60 s) until no service, container or network of the
# stack is left: a running task outlives its service for a moment and holds its host ports
remove_stack() {
    docker stack rm "$STACK" >/dev/null 2>&1 || true
    local left
    for _ in $(seq 1 120); do
        left=$(
            docker service ls -q --filter "label=com.docker.stack.namespace=$STACK"
            docker ps -q --filter "label=com.docker.stack.namespace=$STACK"
            docker network ls -q --filter "label=com.docker.stack.namespace=$STACK"
        )
        if [ -z "$left" ]; then
            return 0
        fi
        docker stack rm "$STACK" >/dev/null 2>&1 || true
        sleep 0.5
    done
    echo "stack $STACK is still there after 60 s" >&2
    return 1
}

cleanup() {
    local rc=$?
    echo "== removing stack $STACK" >&2
    remove_stack || rc=1
    if [ "${KEEP_DIR:-0}" = 1 ]; then
        echo "kept $DIR" >&2
    else
        rm -rf "$DIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# leftovers of an earlier run hold the ports and the stack name
remove_stack

# the shipped definition with this stack name, the repository's recipes and no loader binary
mkdir -p "$DIR/bundles"
sed -e "s|^stack_name = \"relayws\"$|stack_name = \"$STACK\"|" \
    -e "s|^recipes = \[\"../recipes\"\]$|recipes = [\"$ROOT/recipes\"]|" \
    -e '/^reemo-bundle = "reemo-bundle-bin"$/d' \
    bundles/relayws.toml >"$DIR/bundles/relayws.toml"
grep -q "stack_name = \"$STACK\"" "$DIR/bundles/relayws.toml"

echo "== fetching the haproxy .debs and building the bundle (store $STORE)" >&2
"$B" fetch recipes/haproxy.toml --store "$STORE" >&2
BUNDLE=$("$B" build "$DIR/bundles/relayws.toml" --store "$STORE" --out "$DIR/out" --json |
    sed -n 's/.*"bundle": *"\([^"]*\)".*/\1/p')
[ -n "$BUNDLE" ]
echo "bundle: $BUNDLE" >&2

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
}
HTTPS_PORT=$(free_port)
HTTP_PORT=$(free_port)
CONTROL_PORT=$(free_port)
echo "== activating (https $HTTPS_PORT, http $HTTP_PORT, control $CONTROL_PORT, state $STATE)" >&2
"$B" activate "$BUNDLE" --state-dir "$STATE" --timeout 180s \
    --set "HTTPS_PORT=$HTTPS_PORT" --set "HTTP_PORT=$HTTP_PORT" \
    --set "CONTROL_PORT=$CONTROL_PORT" >&2
"$B" pki ca-cert --state-dir "$STATE" >"$DIR/site-ca.pem"
"$B" pki issue-client bench --out "$DIR/client" --state-dir "$STATE" >&2

# wait (at most 60 s) until the proxy answers /healthz from a healthy replica
for _ in $(seq 1 240); do
    if curl -fsS --cacert "$DIR/site-ca.pem" "https://localhost:$HTTPS_PORT/healthz" 2>/dev/null |
        grep -q OK; then
        break
    fi
    sleep 0.25
done

# connect to the host's own non-loopback address: the kernel's DNAT of the host-mode port
# then takes the connection straight to haproxy (127.0.0.1 would go through docker-proxy,
# a userland copy that is not part of the appliance); TLS still verifies `localhost`
CONNECT_IP=$(hostname -I 2>/dev/null | awk '{print $1}')
echo "== uptime: $(uptime)" >&2
"$BENCH" proxy \
    --url "wss://localhost:$HTTPS_PORT" \
    --control-url "https://localhost:$CONTROL_PORT" \
    --connect-ip "${CONNECT_IP:-127.0.0.1}" \
    --ca-file "$DIR/site-ca.pem" \
    --client-cert "$DIR/client/bench.crt" --client-key "$DIR/client/bench.key" \
    --control-secret-file "$STATE/secrets/relay_control_secret" \
    --stack "$STACK" "$@"
