#!/usr/bin/env bash
# Builds the pod VM image, without Docker.
#
#   podvm-image/build.sh [--variant minimal|debian] [--kata-agent PATH]
#                        [--forwarder PATH] [--user-data-bin PATH]
#                        [--format raw|qcow2|vhd|gce-tar[,...]]
#                        [--agent-policy FILE] [--pause-bundle DIR]
#                        [--out DIR]
#
# minimal (default; CI and tests): the Debian cloud kernel as an uncompressed
#   ELF with its PVH entry (vmlinux) and an lz4 initramfs (initrd.img)
#   holding busybox, our init, a few kernel modules, agent-protocol-forwarder,
#   process-user-data and a kata-agent binary with the shared libraries they
#   link. libvirt boots it with direct kernel boot.
# debian: a Debian root file system made by mmdebstrap with the same three
#   binaries and systemd units for them, on a GPT disk that boots through
#   UEFI (systemd-boot on an EFI system partition): what AWS, Azure and GCE
#   boot (disk.raw, always made), plus vmlinuz, initrd.img and cmdline for
#   libvirt's direct kernel boot. --format adds conversions of disk.raw
#   (default qcow2):
#     raw      disk.raw only (AWS import-image/import-snapshot take it)
#     qcow2    podvm.qcow2, compressed (libvirt: LIBVIRT_VOL_NAME)
#     vhd      disk.vhd, fixed-size VHD of a whole number of MiB (Azure)
#     gce-tar  podvm-gce.tar.gz, disk.raw in a gzip'd tar of the oldgnu
#              format (GCE: gcloud compute images create --source-uri)
#   The upload commands per cloud are in podvm-image/README.md.
#
# The kata-agent is never downloaded: --kata-agent names the binary
# (default: the kata-agent-double the workspace builds; a real image wants
# the real kata-agent, see README.md for what it needs). --agent-policy
# installs /etc/kata-opa/default-policy.rego (an agent built with the
# agent-policy feature loads it), --pause-bundle the pause container's OCI
# bundle as /pause_bundle (an agent pulling images in the guest runs it);
# both debian only. The binaries default
# to the workspace's debug builds, as the tests use them; a real image wants
# release builds (scripts/bench-libvirt.sh shows how). The result lives in
# $CARGO_TARGET_DIR/podvm/<variant>-<hash of every input>/ and is reused
# when nothing changed (a format not made yet is converted then);
# $CARGO_TARGET_DIR/podvm/<variant> links to the newest. The last line
# printed is the output directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../scripts/lib.sh"

variant=minimal out= formats= policy= pause=
agent="$BIN_DIR/kata-agent-double"
forwarder="$BIN_DIR/agent-protocol-forwarder"
userdata="$BIN_DIR/process-user-data"
while (($#)); do
    case $1 in
    --variant) variant=$2; shift 2 ;;
    --kata-agent) agent=$2; shift 2 ;;
    --forwarder) forwarder=$2; shift 2 ;;
    --user-data-bin) userdata=$2; shift 2 ;;
    --format) formats=$2; shift 2 ;;
    --agent-policy) policy=$2; shift 2 ;;
    --pause-bundle) pause=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case $variant in minimal|debian) ;; *) echo "--variant is minimal or debian" >&2; exit 2 ;; esac
if [[ $variant == minimal ]]; then
    [[ -z $formats && -z $policy && -z $pause ]] ||
        { echo "--format, --agent-policy and --pause-bundle are for --variant debian" >&2; exit 2; }
else
    formats=${formats:-qcow2}
    for f in ${formats//,/ }; do
        case $f in raw|qcow2|vhd|gce-tar) ;; *) echo "unknown --format $f (raw, qcow2, vhd, gce-tar)" >&2; exit 2 ;; esac
    done
    [[ -z $policy || -f $policy ]] || { echo "--agent-policy $policy: no such file" >&2; exit 1; }
    [[ -z $pause || -f $pause/config.json ]] || { echo "--pause-bundle $pause: no config.json there (an OCI bundle directory)" >&2; exit 1; }
fi
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

# Every input: file names (modes included) and contents of the variant's
# directory, the binaries, the optional policy and pause bundle.
hash=$( { echo "$variant $kpkg $kver_pkg"; cat "$0";
          (cd "$here/$variant" && find . -type f -printf '%p %m\n' | sort && find . -type f | sort | xargs cat);
          sha256sum "$agent" "$forwarder" "$userdata" /bin/busybox | cut -d' ' -f1;
          [[ -z $policy ]] || sha256sum <"$policy";
          [[ -z $pause ]] || (cd "$pause" && find . -type f -print0 | sort -z | xargs -0 sha256sum); } |
        sha256sum | cut -c1-16)
dest=${out:-"$cache/$variant-$hash"}

# The conversions of the debian variant's disk.raw that --format asks for
# and $dest does not have yet.
convert_formats() {
    local f
    for f in ${formats//,/ }; do
        case $f in
        raw) ;;
        qcow2)
            [[ -s $dest/podvm.qcow2 ]] && continue
            log "converting to podvm.qcow2"
            qemu-img convert -c -O qcow2 "$dest/disk.raw" "$dest/podvm.qcow2.tmp"
            mv "$dest/podvm.qcow2.tmp" "$dest/podvm.qcow2" ;;
        vhd)
            [[ -s $dest/disk.vhd ]] && continue
            # Azure takes fixed VHDs only, of a whole number of MiB (the
            # raw disk is whole GiB); force_size keeps that size exactly
            # instead of rounding it to a CHS geometry.
            log "converting to disk.vhd (fixed)"
            qemu-img convert -O vpc -o subformat=fixed,force_size=on "$dest/disk.raw" "$dest/disk.vhd.tmp"
            mv "$dest/disk.vhd.tmp" "$dest/disk.vhd" ;;
        gce-tar)
            [[ -s $dest/podvm-gce.tar.gz ]] && continue
            # GCE's import wants exactly one member, disk.raw, in a gzip'd
            # tar of the oldgnu format (sparse: the holes stay holes).
            log "packing podvm-gce.tar.gz"
            tar --format=oldgnu -S -C "$dest" -cf - disk.raw | gzip -1 >"$dest/podvm-gce.tar.gz.tmp"
            mv "$dest/podvm-gce.tar.gz.tmp" "$dest/podvm-gce.tar.gz" ;;
        esac
    done
}

# Two builds of the same inputs at once (two test binaries) take turns:
# the second finds the first one's result.
exec 9>"$cache/.$variant-$hash.lock"
flock 9
if [[ -e $dest/.complete ]]; then
    log "pod VM image ($variant) unchanged: $dest"
    [[ $variant != debian ]] || convert_formats
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
    for t in mmdebstrap qemu-img mkfs.ext4 mkfs.vfat mcopy sfdisk tar gzip; do
        command -v "$t" >/dev/null || { echo "$t not found: run scripts/setup.sh --podvm-debian" >&2; exit 1; }
    done
    PODVM_AGENT_POLICY=$policy PODVM_PAUSE_BUNDLE=$pause \
        "$here/debian/build-debian.sh" "$work" "$dest" "$kpkg" "$forwarder" "$userdata" "$agent"
    convert_formats
}

log "building the $variant pod VM image into $dest"
"build_$variant"
touch "$dest/.complete"
[[ -n $out ]] || ln -sfn "$dest" "$cache/$variant"
# Cached builds of this variant beyond the newest four (debian: two, each
# holds disks of ~1 GB) are removed; a build in use elsewhere is rebuilt on
# demand.
if [[ -z $out ]]; then
    keep=5
    [[ $variant != debian ]] || keep=3
    ls -1dt "$cache/$variant"-*/ 2>/dev/null | tail -n +$keep | while read -r old; do
        [[ ${old%/} == "$dest" ]] || rm -rf "${old%/}" "$cache/.$(basename "$old").lock"
    done
fi
log "pod VM image ($variant) built in $(echo "$(date +%s.%N) - $started" | bc 2>/dev/null || echo '?')s: $(du -sh "$dest" | cut -f1)"
echo "$dest"
