#!/bin/sh
# The README's main command: build the default appliance, initialise a single-node swarm if
# none is active, activate the bundle, and show a relay session working through it.
# Usage: scripts/demo.sh   (as root, with dockerd running; STATE_DIR overrides the state dir)
set -eu
cd "$(dirname "$0")/.."
STATE_DIR=${STATE_DIR:-/var/lib/reemo-bundle}
export DOCKER_API_VERSION=${DOCKER_API_VERSION:-1.41}

cargo build --release -p reemo-bundle
B=${CARGO_TARGET_DIR:-target}/release/reemo-bundle
BUNDLE=$("$B" build bundles/relayws.toml --out out --json | sed -n 's/.*"bundle": *"\([^"]*\)".*/\1/p')
echo "bundle: $BUNDLE"

if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != "active" ]; then
    "$B" swarm init --advertise-addr 127.0.0.1
fi

"$B" activate "$BUNDLE" --state-dir "$STATE_DIR"
"$B" status --state-dir "$STATE_DIR"

tar -xf "$BUNDLE" -C out bin/ws-relay-server
out/bin/ws-relay-server probe --url http://127.0.0.1:8080 \
    --control-secret-file "$STATE_DIR/secrets/relay_control_secret" --wait-secs 30
