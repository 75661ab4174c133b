#!/usr/bin/env bash
# Installs everything Berth needs to build, run and test on a fresh Debian 12 machine.
# Idempotent: when every package is already present it does nothing but check.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: must run as root (apt-get, loop devices, namespaces)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive

# Fast path (`make run` with nothing to do): this script's last full check passed and no
# package was installed or removed since (dpkg's status file is older than the stamp).
CRI_PROTO=/usr/local/share/berth/cri-api/runtime/v1/api.proto
OK_STAMP=/var/lib/berth-deps.ok
SELF_HASH="$(sha256sum < "$0" | cut -c1-16)"
if [ -f "$OK_STAMP" ] && [ "$(cat "$OK_STAMP")" = "$SELF_HASH" ] \
    && [ "$OK_STAMP" -nt /var/lib/dpkg/status ] && [ -f "$CRI_PROTO" ] \
    && { command -v cargo >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo" ]; }; then
    echo "install-deps: all dependencies present (nothing installed or removed since the last check)"
    exit 0
fi

# Build: kernel (from linux-source), busybox (from its source package), Rust crates with C parts.
BUILD_PKGS="build-essential patch bc bison flex libelf-dev libssl-dev cpio kmod xz-utils lz4 zstd
    linux-source-6.12 dpkg-dev fakeroot pkg-config git"
# Image assembly: filesystems, verity, GRUB for BIOS and EFI, conversions; patchelf (and
# containerd, below) for the node profile's containerd extension.
IMAGE_PKGS="erofs-utils cryptsetup-bin patchelf e2fsprogs dosfstools mtools genimage
    grub-pc-bin grub-efi-amd64-bin grub-common qemu-utils busybox-static ca-certificates gdisk"
# Run and test: QEMU with SeaBIOS and OVMF, OCI peers, a registry, network tools; kconfiglib
# (the Buildroot defconfig test), libfaketime (the reproducible-image test) and grub-emu
# (the boot script run against the A/B state model); grpcio and grpcio-tools for the CRI test's
# client (Debian has no crictl).
TEST_PKGS="qemu-system-x86 ovmf swtpm runc crun skopeo umoci docker-registry hyperfine
    containerd docker.io podman containernetworking-plugins iptables
    curl jq iproute2 nftables socat python3 util-linux procps openssl time
    python3-kconfiglib faketime grub-emu python3-grpcio python3-grpc-tools"

PKGS="$BUILD_PKGS $IMAGE_PKGS $TEST_PKGS"

# deb-src entries so `apt-get source busybox` works.
SRC_LIST=/etc/apt/sources.list.d/berth-deb-src.sources
if [ ! -f "$SRC_LIST" ]; then
    cat > "$SRC_LIST" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    rm -f /var/lib/berth-deps.stamp
fi

missing_packages() {
    local p
    for p in $PKGS; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            printf ' %s' "$p"
        fi
    done
}
missing="$(missing_packages)"

# Serialise concurrent runs (parallel builds share one dpkg database).
exec 9>/var/lock/berth-install-deps.lock
flock 9

# The deb-src lists are needed even when every binary package is present.
if [ -n "$missing" ] || [ ! -f /var/lib/berth-deps.stamp ]; then
    echo "install-deps: apt-get update"
    apt-get update -q
fi
# Two rounds: installing one package can remove another that was there (seen: a machine with a
# newer qemu-utils from backports loses it to Debian 12's qemu-system-x86, whose qemu-system-common
# breaks it); the second round puts back, in the matching version, what the first removed.
for round in 1 2; do
    [ -n "$missing" ] || break
    echo "install-deps: installing$missing"
    apt-get install -y -q --no-install-recommends $missing
    missing="$(missing_packages)"
done
if [ -n "$missing" ]; then
    echo "install-deps: still missing after installing:$missing" >&2
    exit 1
fi
touch /var/lib/berth-deps.stamp

# The CRI api.proto (runtime.v1) the CRI test compiles its client from: the copy vendored in
# the source package of the containerd we run.
if [ ! -f "$CRI_PROTO" ]; then
    echo "install-deps: extracting the CRI api.proto from containerd's source package"
    src=$(mktemp -d)
    (cd "$src" && apt-get source -q containerd > "$src/log" 2>&1) || {
        cat "$src/log" >&2
        rm -rf "$src"
        echo "install-deps: apt-get source containerd failed" >&2
        exit 1
    }
    found=$(find "$src" -path '*/vendor/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto' | head -1)
    if [ -z "$found" ]; then
        rm -rf "$src"
        echo "install-deps: no vendored k8s.io/cri-api runtime/v1 api.proto in containerd's source" >&2
        exit 1
    fi
    install -D -m 0644 "$found" "$CRI_PROTO"
    rm -rf "$src"
fi

# Rust: the toolchain comes with the machine (rustup); make sure the components we use are there.
if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "install-deps: no Rust toolchain found (cargo); install rustup's stable toolchain" >&2
        exit 1
    fi
fi
for c in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
        rustup component add "$c" || { echo "install-deps: cannot add rustup component $c" >&2; exit 1; }
    fi
done
echo "$SELF_HASH" > "$OK_STAMP"
echo "install-deps: all dependencies present"
