#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine (root): installs what the tests need
# (Debian's docker.io, busybox-static, nix-bin, gpg, dpkg, xz-utils; spdx-tools from PyPI), starts dockerd in the background if it does
# not answer, extracts Debian trixie's Docker 26 and forky's Docker 28 for the engine matrix
# (ensure_docker26, ensure_docker28, .debs pinned by sha256), initialises a single-node swarm, then runs the gates:
# cargo fmt --check, cargo clippy -D warnings, nix-instantiate --parse flake.nix, cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_packages
ensure_spdx_tools
ensure_browser
ensure_dockerd
ensure_docker26
ensure_docker28
ensure_swarm

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== nix-instantiate --parse flake.nix"
nix-instantiate --parse flake.nix >/dev/null
echo "== cargo test"
cargo test --workspace -- --test-threads="${TEST_THREADS:-2}"
