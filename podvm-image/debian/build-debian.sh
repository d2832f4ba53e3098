#!/usr/bin/env bash
# The debian variant of the pod VM image, called by ../build.sh:
#   build-debian.sh WORK DEST KERNEL_PKG FORWARDER USER_DATA_BIN KATA_AGENT
# mmdebstrap makes a Debian bookworm root file system (systemd, udev,
# systemd-networkd with DHCP on the first NIC, the cloud kernel and its
# initramfs-tools initrd); our three binaries go to /usr/local/bin with
# systemd units. Output in DEST:
#   podvm.qcow2   the root file system (ext4, label podvm-root, no
#                 partition table) as qcow2: upload it as LIBVIRT_VOL_NAME
#   vmlinuz, initrd.img, cmdline   for direct kernel boot with that disk
#                 as vda (the provider: LIBVIRT_KERNEL + LIBVIRT_INITRD +
#                 LIBVIRT_VOL_NAME); no boot loader is installed.
set -euo pipefail
work=$1 dest=$2 kpkg=$3 forwarder=$4 userdata=$5 agent=$6
here=$(cd "$(dirname "$0")" && pwd)
root="$work/debian-root"
mirror=${PODVM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${PODVM_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

# The cloud kernel the minimal variant uses ($kpkg) comes from
# bookworm-security: both suites are sources.
mmdebstrap --variant=minbase --mode=root \
    --include="systemd,systemd-sysv,udev,kmod,iproute2,initramfs-tools,linux-image-cloud-amd64" \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$root" "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
    "deb $security bookworm-security main"

install -m 0755 "$forwarder" "$root/usr/local/bin/agent-protocol-forwarder"
install -m 0755 "$userdata" "$root/usr/local/bin/process-user-data"
install -m 0755 "$agent" "$root/usr/local/bin/kata-agent"
strip --strip-unneeded "$root"/usr/local/bin/{agent-protocol-forwarder,process-user-data,kata-agent}
for u in "$here"/units/*; do
    install -m 0644 "$u" "$root/etc/systemd/system/$(basename "$u")"
done
install -m 0644 "$here/80-dhcp.network" "$root/etc/systemd/network/80-dhcp.network"
echo podvm >"$root/etc/hostname"
chroot "$root" systemctl enable systemd-networkd.service \
    peerpod-user-data.service kata-agent.service agent-protocol-forwarder.service
chroot "$root" systemctl mask getty@tty1.service
# The image needs no package cache or apt lists.
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/*

kver=$(ls "$root/boot" | sed -n 's/^vmlinuz-//p' | sort -V | tail -1)
[[ $kver == "${kpkg#linux-image-}" ]] || echo "note: the image's kernel is $kver, the minimal variant's ${kpkg#linux-image-}" >&2
cp "$root/boot/vmlinuz-$kver" "$dest/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$dest/initrd.img"
echo "console=ttyS0 root=LABEL=podvm-root rw quiet panic=-1" >"$dest/cmdline"

size_mb=$(( $(du -sm "$root" | cut -f1) * 13 / 10 + 256 ))
truncate -s "${size_mb}M" "$work/root.ext4"
mkfs.ext4 -q -L podvm-root -d "$root" "$work/root.ext4"
qemu-img convert -c -O qcow2 "$work/root.ext4" "$dest/podvm.qcow2"
rm -f "$work/root.ext4"
