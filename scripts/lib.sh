# Shared shell steps of scripts/test.sh and scripts/demo.sh: install packages, start dockerd,
# initialise a single-node swarm. Sourced, not run.

# Debian's 20.10 client talks the daemon's API version; a newer client elsewhere on PATH
# (/usr/local/bin) is not needed.
export PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

ensure_packages() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    [ -x /bin/busybox ] || missing+=(busybox-static)
    command -v nix-instantiate >/dev/null 2>&1 || missing+=(nix-bin)
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    command -v iptables >/dev/null 2>&1 || missing+=(iptables)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    # TLS checks of the site PKI: curl --cacert and openssl s_client
    command -v curl >/dev/null 2>&1 || missing+=(curl ca-certificates)
    # Debian images: gpgv verifies InRelease (lock); the tests build a tiny signed archive
    # with dpkg-deb, gpg and xz, and validate SBOMs with pyspdxtools (pip).
    command -v gpgv >/dev/null 2>&1 || missing+=(gpgv)
    command -v gpg >/dev/null 2>&1 || missing+=(gpg)
    command -v dpkg-deb >/dev/null 2>&1 || missing+=(dpkg)
    command -v xz >/dev/null 2>&1 || missing+=(xz-utils)
    [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "== installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

ensure_spdx_tools() {
    if command -v pyspdxtools >/dev/null 2>&1 &&
        python3 -c 'import cyclonedx.validation.json, jsonschema' >/dev/null 2>&1; then
        return
    fi
    echo "== pip install spdx-tools cyclonedx-python-lib[json-validation] (SBOM validators of the tests)"
    if ! command -v pip3 >/dev/null 2>&1 && ! command -v pip >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq python3-pip >/dev/null
    fi
    local pkgs=(spdx-tools "cyclonedx-python-lib[json-validation]")
    "$(command -v pip3 || command -v pip)" install -q "${pkgs[@]}" 2>/dev/null ||
        "$(command -v pip3 || command -v pip)" install -q --break-system-packages "${pkgs[@]}"
}

ensure_dockerd() {
    if docker info >/dev/null 2>&1; then
        return
    fi
    echo "== starting dockerd (log: /var/log/reemo-dockerd.log)"
    nohup dockerd >/var/log/reemo-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do
        if docker info >/dev/null 2>&1; then
            return
        fi
        sleep 1
    done
    echo "dockerd did not answer within 60 s; see /var/log/reemo-dockerd.log" >&2
    tail -20 /var/log/reemo-dockerd.log >&2 || true
    exit 1
}

ensure_swarm() {
    local state
    state=$(docker info --format '{{.Swarm.LocalNodeState}}')
    if [ "$state" != "active" ]; then
        echo "== docker swarm init --advertise-addr 127.0.0.1"
        docker swarm init --advertise-addr 127.0.0.1 >/dev/null
    fi
}

# The browser end-to-end test (tests/browser_relay.rs): Debian's chromium, run headless as the
# user side of a relay session, and certutil (libnss3-tools) to make the NSS database through
# which it trusts the site CA.
ensure_browser() {
    local missing=()
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v certutil >/dev/null 2>&1 || missing+=(libnss3-tools)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "== installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}
