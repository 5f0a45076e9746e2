#!/usr/bin/env bash
# The README's main command, on a fresh Debian machine as root: installs Debian's docker.io
# and starts dockerd if it does not answer, fetches the .debs its Debian images' locks name,
# builds the default appliance bundle
# (bundles/relayws.toml), initialises a single-node swarm with `reemo-bundle swarm init` if
# none is active, activates the bundle, prints `status`, and relays a WebSocket session
# through the published port with the bundle's own `ws-relay-server probe` over TLS, the
# relay's certificate verified against the site CA exported by `reemo-bundle pki ca-cert`.
# STATE_DIR overrides the state directory (default /var/lib/reemo-bundle).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
STATE_DIR=${STATE_DIR:-/var/lib/reemo-bundle}

ensure_packages
ensure_dockerd

cargo build --release -p reemo-bundle
B=${CARGO_TARGET_DIR:-target}/release/reemo-bundle
# The .debs the committed locks of its Debian images name (the build itself is offline).
"$B" fetch bundles/relayws.toml
BUNDLE=$("$B" build bundles/relayws.toml --out out --json | sed -n 's/.*"bundle": *"\([^"]*\)".*/\1/p')
echo "bundle: $BUNDLE"
"$B" inspect "$BUNDLE"

if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != "active" ]; then
    "$B" swarm init --advertise-addr 127.0.0.1
fi

"$B" activate "$BUNDLE" --state-dir "$STATE_DIR"
"$B" status --state-dir "$STATE_DIR"
docker stack services relayws

tar -xf "$BUNDLE" -C out bin/ws-relay-server
"$B" pki ca-cert --state-dir "$STATE_DIR" > out/site-ca.pem
out/bin/ws-relay-server probe --url https://localhost:8080 --ca-file out/site-ca.pem \
    --control-secret-file "$STATE_DIR/secrets/relay_control_secret" --wait-secs 30
curl -sS --cacert out/site-ca.pem https://localhost:8080/healthz; echo
