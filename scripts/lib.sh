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

# Newer engines beside the system's 20.10, for the engine matrix (tests/engine26_*.rs,
# tests/engine28_containerd.rs, tests/engine_mixed_swarm.rs): Debian's docker.io and
# containerd, fetched from the pool of the configured Debian mirror, checked against these
# sha256 pins (fixed inputs, like any other), and extracted with `dpkg-deb -x`. Nothing is
# installed: no maintainer scripts run, and the engines run with bookworm's runc (trixie's
# and forky's need glibc 2.38). A .deb already in $REEMO_DEB_CACHE with the right sha256 is
# not fetched again (an offline CI can seed that folder).
# Docker 26.1.5 (API 1.45) with containerd 1.7, from trixie:
DOCKER26_DEBS=(
    "pool/main/d/docker.io/docker.io_26.1.5+dfsg1-9+deb13u1+b1_amd64.deb 53ae1a99f15113f0a0d2226808ec0d24ee31b3b87b87ab8ec35be09a1a2ee13b"
    "pool/main/c/containerd/containerd_1.7.24~ds1-6+deb13u1_amd64.deb ed708deb96fe476a3bce4efa5c0538dfbcf717ab9a7c7944ba7260342c25899c"
)
export REEMO_DOCKER26_ROOT="${REEMO_DOCKER26_ROOT:-/var/cache/reemo-bundle/docker-26.1.5}"
# Docker 28.5.2 (API 1.51: image descriptors) with containerd 2.1, from forky:
DOCKER28_DEBS=(
    "pool/main/d/docker.io/docker.io_28.5.2+dfsg4-5_amd64.deb 69a59cc77a1fb8ee9ad6859abc2e6de5d76b70887405595c2b1307818fecf682"
    "pool/main/c/containerd/containerd_2.1.9+ds1-5_amd64.deb 2dda86ce7033fd612fc50e136679d8174ccad680eb29cd4611e0d2a1b84cf591"
)
export REEMO_DOCKER28_ROOT="${REEMO_DOCKER28_ROOT:-/var/cache/reemo-bundle/docker-28.5.2}"
REEMO_DEB_CACHE="${REEMO_DEB_CACHE:-/var/cache/reemo-bundle/debs}"

# The Debian mirror apt uses (first `URIs:` of a deb822 source, else a `deb` line).
debian_mirror() {
    local m
    m=$(grep -hoE '^URIs:[[:space:]]*[^[:space:]]+/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null |
        head -1 | sed -E 's/^URIs:[[:space:]]*//' || true)
    if [ -z "$m" ]; then
        m=$(grep -hoE '^deb[[:space:]]+[^[:space:]]+/debian/?[[:space:]]' /etc/apt/sources.list 2>/dev/null |
            head -1 | awk '{print $2}' || true)
    fi
    echo "${DEBIAN_MIRROR:-${m:-http://deb.debian.org/debian}}" | sed 's:/*$::'
}

# Usage: extract_debs ROOT "PATH SHA256"... — fetch (pinned) and extract the .debs into ROOT
# (replaced whole, and only when the pins changed).
extract_debs() {
    local root=$1
    shift
    local stamp="$root/.reemo-extracted"
    local want
    want=$(printf '%s\n' "$@" | sha256sum | cut -c1-64)
    if [ -x "$root/usr/sbin/dockerd" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        return
    fi
    local mirror entry path sum deb
    mirror=$(debian_mirror)
    mkdir -p "$REEMO_DEB_CACHE"
    rm -rf "$root.tmp"
    mkdir -p "$root.tmp"
    for entry in "$@"; do
        read -r path sum <<<"$entry"
        deb="$REEMO_DEB_CACHE/$(basename "$path")"
        if ! echo "$sum  $deb" | sha256sum -c --status 2>/dev/null; then
            echo "== fetching $mirror/$path"
            curl -fsS --retry 3 -o "$deb.part" "$mirror/$path"
            if ! echo "$sum  $deb.part" | sha256sum -c --status; then
                echo "$(basename "$path"): sha256 $(sha256sum "$deb.part" | cut -c1-64), expected $sum" >&2
                rm -f "$deb.part"
                exit 1
            fi
            mv "$deb.part" "$deb"
        fi
        dpkg-deb -x "$deb" "$root.tmp"
    done
    echo "$want" >"$root.tmp/.reemo-extracted"
    rm -rf "$root"
    mv "$root.tmp" "$root"
    echo "== Docker $("$root/usr/sbin/dockerd" --version | cut -d' ' -f3 | tr -d ,) extracted into $root"
}

ensure_docker26() {
    extract_debs "$REEMO_DOCKER26_ROOT" "${DOCKER26_DEBS[@]}"
}

ensure_docker28() {
    extract_debs "$REEMO_DOCKER28_ROOT" "${DOCKER28_DEBS[@]}"
}

# The environment reemo-bundle's builder gives cargo for a static binary
# (src/builder/realise.rs, static_build_env; a unit test compares the two): building the host
# tool with it makes the bundle build's own static build of the tool a no-op, so the main
# command compiles each program once.
# Usage: static_cargo_env WORKSPACE CARGO_HOME TARGET_DIR SOURCE_DATE_EPOCH — prints
# NAME=VALUE lines.
static_cargo_env() {
    local ws=$1 home=$2 target=$3 epoch=$4 sep=$'\x1f'
    printf 'CARGO_TARGET_DIR=%s\n' "$target"
    printf 'CARGO_ENCODED_RUSTFLAGS=%s\n' "-Ctarget-feature=+crt-static${sep}--remap-path-prefix=$ws=/build/src${sep}--remap-path-prefix=$home=/cargo${sep}--remap-path-prefix=$target=/build/target"
    printf 'CARGO_PROFILE_RELEASE_STRIP=symbols\n'
    printf 'CARGO_PROFILE_RELEASE_DEBUG=false\n'
    printf 'CARGO_PROFILE_RELEASE_INCREMENTAL=false\n'
    printf 'SOURCE_DATE_EPOCH=%s\nTZ=UTC\nLC_ALL=C\n' "$epoch"
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
