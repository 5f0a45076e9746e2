#!/usr/bin/env bash
# The README's main command, on a fresh Debian machine as root: installs Debian's docker.io
# and starts dockerd if it does not answer, builds the loader once — as the static binary the
# bundle ships (same cargo environment as the bundle build, which then reuses it) —, fetches
# the .debs its Debian images' locks name, builds the default appliance bundle
# (bundles/relayws.toml: haproxy entry proxy + two relay replicas), initialises a single-node
# swarm with `reemo-bundle swarm init` if none is active, activates the bundle with the
# defaults (PUBLIC_HOST=localhost, ports 443, 80 and 8443), prints `status`, and proves it:
# the bundle's own `ws-relay-server probe` relays a WebSocket session through
# wss://localhost:443 with the entry certificate verified against the site CA
# (`reemo-bundle pki ca-cert`), its control calls through https://localhost:8443 with a client
# certificate of the site CA (`reemo-bundle pki issue-client`).
# STATE_DIR overrides the state directory (default /var/lib/reemo-bundle), STORE the build
# store (default ~/.cache/reemo-bundle/store).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
STATE_DIR=${STATE_DIR:-/var/lib/reemo-bundle}
STORE=${STORE:-${XDG_CACHE_HOME:-$HOME/.cache}/reemo-bundle/store}
start=$(date +%s)

ensure_packages
ensure_dockerd

# the loader, built once: the bundle build below finds this compilation fresh
mkdir -p "$STORE"
(
    while IFS= read -r line; do export "$line"; done \
        < <(static_cargo_env "$(pwd -P)" "${CARGO_HOME:-$HOME/.cargo}" "$STORE/cargo-target" "${SOURCE_DATE_EPOCH:-0}")
    unset RUSTFLAGS
    cargo build --release --locked --target x86_64-unknown-linux-gnu -p reemo-bundle --bin reemo-bundle
)
B=$STORE/cargo-target/x86_64-unknown-linux-gnu/release/reemo-bundle
# The .debs the committed locks of its Debian images name (the build itself is offline).
"$B" fetch bundles/relayws.toml --store "$STORE"
BUNDLE=$("$B" build bundles/relayws.toml --store "$STORE" --out out --json | sed -n 's/.*"bundle": *"\([^"]*\)".*/\1/p')
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
"$B" pki issue-client demo --out out/demo-client --state-dir "$STATE_DIR"
out/bin/ws-relay-server probe --url https://localhost:443 --ca-file out/site-ca.pem \
    --control-url https://localhost:8443 \
    --client-cert out/demo-client/demo.crt --client-key out/demo-client/demo.key \
    --control-secret-file "$STATE_DIR/secrets/relay_control_secret" --wait-secs 30
curl -sS --cacert out/site-ca.pem https://localhost/healthz
echo "main command done in $(( $(date +%s) - start )) s"
