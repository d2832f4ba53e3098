#!/usr/bin/env bash
# Builds what libvirt boots as a pod VM, without Docker.
#
#   podvm-image/build.sh [--variant minimal|debian] [--kata-agent PATH]
#                        [--forwarder PATH] [--user-data-bin PATH] [--out DIR]
#
# minimal (default; CI and tests): the Debian cloud kernel as an uncompressed
#   ELF with its PVH entry (vmlinux) and an lz4 initramfs (initrd.img)
#   holding busybox, our init, a few kernel modules, agent-protocol-forwarder,
#   process-user-data and a kata-agent binary with the shared libraries they
#   link. libvirt boots it with direct kernel boot.
# debian: a qcow2 disk (podvm.qcow2) with a Debian root file system made by
#   mmdebstrap, the same three binaries and systemd units for them.
#
# The kata-agent is never downloaded: --kata-agent names the binary
# (default: the kata-agent-double the workspace builds). The binaries default
# to the workspace's debug builds, as the tests use them; a real image wants
# release builds (scripts/bench-libvirt.sh shows how). The result lives in
# $CARGO_TARGET_DIR/podvm/<variant>-<hash of every input>/ and is reused
# when nothing changed; $CARGO_TARGET_DIR/podvm/<variant> links to the
# newest. The last line printed is the output directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../scripts/lib.sh"

variant=minimal out=
agent="$BIN_DIR/kata-agent-double"
forwarder="$BIN_DIR/agent-protocol-forwarder"
userdata="$BIN_DIR/process-user-data"
while (($#)); do
    case $1 in
    --variant) variant=$2; shift 2 ;;
    --kata-agent) agent=$2; shift 2 ;;
    --forwarder) forwarder=$2; shift 2 ;;
    --user-data-bin) userdata=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case $variant in minimal|debian) ;; *) echo "--variant is minimal or debian" >&2; exit 2 ;; esac
for b in "$agent" "$forwarder" "$userdata"; do
    [[ -x $b ]] || { echo "missing binary $b (build the workspace first: scripts/setup.sh)" >&2; exit 1; }
done
for t in busybox cpio lz4 od readelf dpkg-deb apt-get strip; do
    command -v "$t" >/dev/null || { echo "$t not found: run scripts/setup.sh --libvirt" >&2; exit 1; }
done

cache="$CARGO_TARGET_DIR/podvm"
mkdir -p "$cache/dl"

# The Debian cloud kernel: the package linux-image-cloud-amd64 points at.
kpkg=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -1)
[[ -n $kpkg ]] || { echo "apt knows no linux-image-cloud-amd64 (apt-get update?)" >&2; exit 1; }
kver_pkg=$(apt-cache show --no-all-versions "$kpkg" | sed -n 's/^Version: //p' | head -1)
kdeb="$cache/dl/${kpkg}_${kver_pkg}_amd64.deb"
if [[ ! -s $kdeb ]]; then
    log "downloading $kpkg $kver_pkg"
    (cd "$cache/dl" && apt-get download "$kpkg=$kver_pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
    [[ -s $kdeb ]] || { echo "download of $kpkg failed" >&2; exit 1; }
fi
kver=${kpkg#linux-image-}
kroot="$cache/dl/$kpkg"
if [[ ! -d $kroot/lib/modules/$kver ]]; then
    rm -rf "$kroot.tmp" && dpkg-deb -x "$kdeb" "$kroot.tmp"
    busybox depmod -b "$kroot.tmp" "$kver"
    mv "$kroot.tmp" "$kroot"
fi

hash=$( { echo "$variant $kpkg $kver_pkg"; cat "$0"; find "$here/$variant" -type f | sort | xargs cat;
          sha256sum "$agent" "$forwarder" "$userdata" /bin/busybox | cut -d' ' -f1; } | sha256sum | cut -c1-16)
dest=${out:-"$cache/$variant-$hash"}
if [[ -e $dest/.complete ]]; then
    log "pod VM image ($variant) unchanged: $dest"
    [[ -n $out ]] || ln -sfn "$dest" "$cache/$variant"
    echo "$dest"
    exit 0
fi
started=$(date +%s.%N)
rm -rf "$dest" && mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Copies a dynamically linked binary to $1/<dest path>, without its debug
# info (a debug build is ~120 MB, ~14 MB stripped), with the libraries ldd
# resolves for it, at the same paths.
install_bin() {
    local root=$1 src=$2 to=$3 lib
    install -D -m 0755 "$src" "$root$to"
    strip --strip-unneeded "$root$to"
    for lib in $(ldd "$src" 2>/dev/null | grep -o '/[^ ]*'); do
        [[ -e $root$lib ]] || install -D -m 0755 "$lib" "$root$lib"
    done
}

# The modules of $here/minimal/modules with everything they depend on.
module_closure() {
    local dep="$kroot/lib/modules/$kver/modules.dep"
    awk -v want="$(tr '\n' ' ' <"$here/minimal/modules")" '
        BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) keep[w[i]] = 1 }
        { f = $1; sub(":$", "", f); m = f; sub(".*/", "", m); sub("\\.ko.*$", "", m); gsub("-", "_", m)
          line[m] = $0 }
        END { for (m in keep) walk(m) }
        function walk(m,   parts, k, i, d) {
            if (seen[m]++ || !(m in line)) return
            k = split(line[m], parts, " ")
            f = parts[1]; sub(":$", "", f); print f
            for (i = 2; i <= k; i++) { d = parts[i]; sub(".*/", "", d); sub("\\.ko.*$", "", d); gsub("-", "_", d); walk(d) }
        }' "$dep" | sort -u
}

# The kernel of the bzImage $1 as an uncompressed ELF at $2, checked to carry
# the PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY, type 0x12). Given such a
# file, QEMU enters the kernel in 32-bit mode directly: no real-mode set-up
# code and no decompression inside the guest, which under TCG is ~0.5 s of
# the boot. The payload's place is in the boot protocol header (setup_sects
# at 0x1f1, payload_offset at 0x248, payload_length at 0x24c).
extract_vmlinux() {
    local bz=$1 out=$2 sects off len start
    sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$bz" | tr -d ' ')
    ((sects == 0)) && sects=4
    off=$(od -An -tu4 -j $((0x248)) -N4 "$bz" | tr -d ' ')
    len=$(od -An -tu4 -j $((0x24c)) -N4 "$bz" | tr -d ' ')
    start=$(((sects + 1) * 512 + off))
    local magic
    magic=$(od -An -tx1 -j "$start" -N4 "$bz" | tr -d ' ')
    local unpack
    case $magic in
    02214c18) unpack="lz4 -dc" ;;
    1f8b*) unpack="gzip -dc" ;;
    fd377a58) unpack="xz -dc" ;;
    28b52ffd) unpack="zstd -dc" ;;
    *) echo "$bz: unknown kernel payload compression (magic $magic)" >&2; return 1 ;;
    esac
    # The payload ends with its uncompressed size, which the decompressors
    # report as trailing garbage: the check below decides.
    tail -c +$((start + 1)) "$bz" | head -c "$len" | $unpack >"$out" 2>/dev/null || true
    readelf -n "$out" 2>/dev/null | grep -q 'Xen .*(0x00000012)' || {
        echo "$bz: no ELF kernel with a PVH entry note in its payload" >&2
        return 1
    }
}

build_minimal() {
    local root="$work/root" m
    mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,run,tmp,media/cidata,usr/local/bin,lib/modules/"$kver"}
    install -m 0755 /bin/busybox "$root/bin/busybox"
    install -m 0755 "$here/minimal/init" "$root/init"
    install -m 0755 "$here/minimal/udhcpc.script" "$root/etc/udhcpc.script"
    install -m 0644 "$here/minimal/modules" "$root/etc/podvm-modules"
    install_bin "$root" "$forwarder" /usr/local/bin/agent-protocol-forwarder
    install_bin "$root" "$userdata" /usr/local/bin/process-user-data
    install_bin "$root" "$agent" /usr/local/bin/kata-agent
    for m in $(module_closure); do
        install -D -m 0644 "$kroot/lib/modules/$kver/$m" "$root/lib/modules/$kver/$m"
    done
    cp "$kroot/lib/modules/$kver"/modules.{order,builtin} "$root/lib/modules/$kver/" 2>/dev/null || true
    busybox depmod -b "$root" "$kver"
    echo podvm >"$root/etc/hostname"
    printf 'root:x:0:0:root:/:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\n' >"$root/etc/group"
    # lz4 (legacy frame, what the kernel reads) unpacks several times faster
    # than gzip under TCG; the kernel unpacks the initramfs while it boots.
    (cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet) | lz4 -l -q -c >"$dest/initrd.img"
    extract_vmlinux "$kroot/boot/vmlinuz-$kver" "$dest/vmlinux"
    # Keep in step with DEFAULT_CMDLINE in providers/libvirt/src/config.rs.
    echo "console=ttyS0 quiet loglevel=3 panic=-1 cryptomgr.notests" >"$dest/cmdline"
}

build_debian() {
    for t in mmdebstrap qemu-img mkfs.ext4; do
        command -v "$t" >/dev/null || { echo "$t not found: run scripts/setup.sh --podvm-debian" >&2; exit 1; }
    done
    "$here/debian/build-debian.sh" "$work" "$dest" "$kpkg" "$forwarder" "$userdata" "$agent"
}

log "building the $variant pod VM image into $dest"
"build_$variant"
touch "$dest/.complete"
[[ -n $out ]] || ln -sfn "$dest" "$cache/$variant"
# Cached builds of this variant beyond the newest four are removed (each
# holds a ~50 MB kernel); a build in use elsewhere is rebuilt on demand.
if [[ -z $out ]]; then
    ls -1dt "$cache/$variant"-*/ 2>/dev/null | tail -n +5 | while read -r old; do
        [[ ${old%/} == "$dest" ]] || rm -rf "${old%/}"
    done
fi
log "pod VM image ($variant) built in $(echo "$(date +%s.%N) - $started" | bc 2>/dev/null || echo '?')s: $(du -sh "$dest" | cut -f1)"
echo "$dest"
