#!/usr/bin/env bash
# Installs what building, running and testing need on a fresh Debian 12
# machine (root, Rust toolchain present). Safe to run again.
#   scripts/setup.sh          what the local demo needs (no cloud SDKs)
#   scripts/setup.sh --tests  also moto (a local EC2 API) and every
#                             provider feature, as the test suite builds,
#                             and libvirt + QEMU (as --libvirt) and the
#                             debian/cloud pod VM image tools (as
#                             --podvm-debian)
#   scripts/setup.sh --libvirt  libvirt, QEMU and the pod VM image tools
#                             only (no build)
#   scripts/setup.sh --podvm-debian  as --libvirt, plus what
#                             podvm-image/build.sh --variant debian needs
#                             (mmdebstrap, e2fsprogs, dosfstools, mtools,
#                             fdisk, qemu-utils) and OVMF to boot its disk
#   scripts/setup.sh --image  the adaptor image tools only (mmdebstrap,
#                             umoci; containerd to import and run it)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

need_apt=()
command -v ip >/dev/null || need_apt+=(iproute2)
command -v ping >/dev/null || need_apt+=(iputils-ping)
command -v pkill >/dev/null || need_apt+=(procps)
command -v curl >/dev/null || need_apt+=(curl)
command -v cc >/dev/null || need_apt+=(build-essential)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
if ((${#need_apt[@]})); then
    log "installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" </dev/null
fi
# libvirt + QEMU come from bookworm-backports: plain bookworm's libvirt 9.0 /
# QEMU 7.2 clash with the backports qemu-utils 10.0 these machines carry.
# busybox-static, cpio and lz4 build the minimal pod VM image; dpkg-deb
# (dpkg) unpacks the Debian cloud kernel and readelf (binutils) checks the
# kernel extracted from it; xorriso reads back the config drive the provider
# makes, as an independent check in its unit test.
# Installs the named packages (none: nothing) preferring bookworm-backports.
install_backports() {
    (($#)) || return 0
    log "installing $* from bookworm-backports"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq </dev/null
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends -t bookworm-backports "$@" </dev/null
}
add_backports_source() {
    local list=/etc/apt/sources.list.d/bookworm-backports.sources
    if [[ ! -e $list ]]; then
        log "adding the bookworm-backports apt source"
        cat >"$list" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    fi
}
setup_libvirt() {
    add_backports_source
    local pkgs=()
    command -v libvirtd >/dev/null || pkgs+=(libvirt-daemon-system)
    command -v qemu-system-x86_64 >/dev/null || pkgs+=(qemu-system-x86)
    pkg-config --exists libvirt 2>/dev/null || pkgs+=(libvirt-dev)
    [[ -x /bin/busybox ]] || pkgs+=(busybox-static)
    command -v cpio >/dev/null || pkgs+=(cpio)
    command -v lz4 >/dev/null || pkgs+=(lz4)
    command -v readelf >/dev/null || pkgs+=(binutils)
    command -v xorriso >/dev/null || pkgs+=(xorriso)
    command -v dnsmasq >/dev/null || pkgs+=(dnsmasq-base)
    install_backports "${pkgs[@]}"
}
# The debian pod VM image variant: mmdebstrap makes its root file system,
# mkfs.ext4 (e2fsprogs) the root partition, mkfs.vfat (dosfstools) and
# mcopy/mmd (mtools) the EFI system partition, sfdisk (fdisk) the GPT,
# qemu-img (qemu-utils) the qcow2/VHD conversions; the tests boot the UEFI
# disk with the OVMF firmware (ovmf) and relay the guest's metadata-service
# connections to their stand-in with socat.
setup_podvm_debian() {
    local pkgs=()
    command -v mmdebstrap >/dev/null || pkgs+=(mmdebstrap)
    command -v mkfs.ext4 >/dev/null || pkgs+=(e2fsprogs)
    command -v mkfs.vfat >/dev/null || pkgs+=(dosfstools)
    command -v mcopy >/dev/null || pkgs+=(mtools)
    command -v sfdisk >/dev/null || pkgs+=(fdisk)
    command -v qemu-img >/dev/null || pkgs+=(qemu-utils)
    [[ -e /usr/share/OVMF/OVMF_CODE_4M.fd ]] || pkgs+=(ovmf)
    command -v socat >/dev/null || pkgs+=(socat)
    install_backports "${pkgs[@]}"
}
# The adaptor's OCI image (install/image/build.sh): mmdebstrap makes its
# root file system, umoci the image, strip (binutils) trims the binaries;
# the image test imports and runs it in a private containerd (ctr, runc).
setup_image() {
    add_backports_source
    local pkgs=()
    command -v mmdebstrap >/dev/null || pkgs+=(mmdebstrap)
    command -v umoci >/dev/null || pkgs+=(umoci)
    command -v containerd >/dev/null || pkgs+=(containerd)
    command -v strip >/dev/null || pkgs+=(binutils)
    install_backports "${pkgs[@]}"
}
case ${1:-} in
--tests) setup_libvirt; setup_podvm_debian; setup_image ;;
--image) setup_image; exit 0 ;;
--libvirt) setup_libvirt; exit 0 ;;
--podvm-debian) setup_libvirt; setup_podvm_debian; exit 0 ;;
esac

command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup) first" >&2; exit 1; }
mkdir -p "$CARGO_TARGET_DIR"
if [[ ${1:-} == --tests ]]; then
    if ! command -v moto_server >/dev/null && ! python3 -c 'import moto.server' 2>/dev/null; then
        log "installing moto[server] (local EC2 API for the AWS provider tests)"
        python3 -m pip install --quiet --disable-pip-version-check 'moto[server]' </dev/null
    fi
    # The chart tests: Helm's Go SDK behind a C ABI (renders and lints
    # offline) and the Kubernetes OpenAPI schemas per version.
    if ! python3 -c 'import helm_python, kubernetes_validate' 2>/dev/null; then
        log "installing helm-python-sdk and kubernetes-validate (chart tests)"
        python3 -m pip install --quiet --disable-pip-version-check \
            'helm-python-sdk==0.2.2' 'kubernetes-validate==1.37.0' </dev/null
    fi
    # The Python example provider plugin (grpcio serves, grpcio-tools
    # generates its code from provider.proto at start-up).
    if ! python3 -c 'import grpc, grpc_tools' 2>/dev/null; then
        log "installing grpcio and grpcio-tools (the Python example provider plugin)"
        python3 -m pip install --quiet --disable-pip-version-check \
            'grpcio==1.85.3' 'grpcio-tools==1.85.1' </dev/null
    fi
    log "building every binary with every provider into $CARGO_TARGET_DIR (the AWS SDK takes minutes the first time)"
    cargo build --workspace --all-features --bins
else
    log "building the binaries into $CARGO_TARGET_DIR"
    cargo build --bins -p cloud-api-adaptor -p agent-protocol-forwarder -p peerpod-tests
fi
