#!/usr/bin/env bash
# The debian variant of the pod VM image, called by ../build.sh:
#   build-debian.sh WORK DEST KERNEL_PKG FORWARDER USER_DATA_BIN KATA_AGENT
# with PODVM_AGENT_POLICY / PODVM_PAUSE_BUNDLE optionally naming a kata-agent
# policy file and a pause container bundle to install.
#
# mmdebstrap makes a Debian bookworm root file system (systemd, udev,
# systemd-networkd with DHCP, the cloud kernel and its initramfs-tools
# initrd, systemd-boot's EFI binary); our three binaries go to
# /usr/local/bin and rootfs/ (systemd units, network files, the agent's
# config, the user-data step) is copied over it. Output in DEST:
#   disk.raw   a GPT disk a cloud boots through UEFI: partition 1 the EFI
#              system partition (FAT32, label ESP) with systemd-boot as
#              EFI/BOOT/BOOTX64.EFI, its loader entry, the kernel and the
#              initrd; partition 2 the root file system (ext4, label
#              podvm-root, the discoverable-partitions root type). Its
#              size is a whole number of GiB (GCE requires it).
#   vmlinuz, initrd.img, cmdline   the same kernel, initrd and command
#              line for direct kernel boot with that disk (libvirt).
# No loop devices or mounts: the partitions are made as files (mkfs.ext4
# -d, mkfs.vfat + mtools) and written into the disk at their offsets.
set -euo pipefail
work=$1 dest=$2 kpkg=$3 forwarder=$4 userdata=$5 agent=$6
here=$(cd "$(dirname "$0")" && pwd)
root="$work/debian-root"
mirror=${PODVM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${PODVM_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

# One kernel command line for the three clouds and libvirt. Serial console
# on ttyS0 (AWS, GCE and Azure all show COM1 as the instance's serial log;
# tty0 keeps the hypervisor's screen); panic=-1 reboots at once rather than
# hanging a VM the adaptor waits on; NVMe never times out (EBS volumes on
# Nitro may stall longer than the 30 s default). No getty listens on
# either console (see below).
cmdline="root=LABEL=podvm-root rw console=tty0 console=ttyS0,115200n8 earlyprintk=ttyS0 panic=-1 nvme_core.io_timeout=4294967295 quiet"

# The cloud kernel the minimal variant uses ($kpkg) comes from
# bookworm-security: both suites are sources.
mmdebstrap --variant=minbase --mode=root \
    --include="systemd,systemd-sysv,udev,kmod,iproute2,initramfs-tools,linux-image-cloud-amd64,systemd-boot-efi,curl" \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='force-unsafe-io' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$root" "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
    "deb $security bookworm-security main"

echo "podvm-image: root file system made by mmdebstrap in ${SECONDS}s" >&2

install -m 0755 "$forwarder" "$root/usr/local/bin/agent-protocol-forwarder"
install -m 0755 "$userdata" "$root/usr/local/bin/process-user-data"
install -m 0755 "$agent" "$root/usr/local/bin/kata-agent"
strip --strip-unneeded "$root"/usr/local/bin/{agent-protocol-forwarder,process-user-data,kata-agent}
# A binary whose shared libraries the image lacks would only fail at boot.
for b in agent-protocol-forwarder process-user-data kata-agent; do
    if chroot "$root" ldd "/usr/local/bin/$b" 2>&1 | grep 'not found'; then
        echo "/usr/local/bin/$b needs libraries the image does not have (above)" >&2
        exit 1
    fi
done
if [[ -n ${PODVM_AGENT_POLICY:-} ]]; then
    install -D -m 0644 "$PODVM_AGENT_POLICY" "$root/etc/kata-opa/default-policy.rego"
fi
if [[ -n ${PODVM_PAUSE_BUNDLE:-} ]]; then
    mkdir -p "$root/pause_bundle"
    cp -a "$PODVM_PAUSE_BUNDLE"/. "$root/pause_bundle/"
fi
cp -a --no-preserve=ownership "$here/rootfs"/. "$root/"
echo podvm >"$root/etc/hostname"
# systemd-networkd-wait-online comes with networkd (its Also=) and holds
# network-online.target until a link is configured.
chroot "$root" systemctl enable systemd-networkd.service \
    peerpod-user-data.service kata-agent.service agent-protocol-forwarder.service \
    azure-ready.service
# Nobody logs in to a pod VM: no getty on the screen or on the serial
# console the kernel command line names (a confidential VM's serial port
# is a channel the host controls), no root password.
chroot "$root" systemctl mask getty@.service serial-getty@.service console-getty.service getty-static.service
chroot "$root" usermod -p '!' root
# The image needs no package cache or apt lists.
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/*

kver=$(ls "$root/boot" | sed -n 's/^vmlinuz-//p' | sort -V | tail -1)
[[ $kver == "${kpkg#linux-image-}" ]] || echo "note: the image's kernel is $kver, the minimal variant's ${kpkg#linux-image-}" >&2
# The drivers each cloud's disks and NICs need: NVMe and ENA (AWS Nitro),
# VMBus storage and network and the Mellanox VF (Azure), virtio and gVNIC
# (GCE, libvirt). initramfs-tools puts the storage ones in the initrd.
for m in nvme virtio_blk virtio_scsi hv_vmbus hv_storvsc hv_netvsc mlx5_core ena gve virtio_net; do
    chroot "$root" modinfo -k "$kver" "$m" >/dev/null 2>&1 ||
        grep -q "/$m.ko" "$root/lib/modules/$kver/modules.builtin" || {
        echo "the kernel $kver has no $m driver" >&2
        exit 1
    }
done
cp "$root/boot/vmlinuz-$kver" "$dest/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$dest/initrd.img"
echo "$cmdline" >"$dest/cmdline"

# The EFI system partition: systemd-boot as the removable-media loader
# path (firmware with empty boot variables, as on a fresh cloud disk,
# starts EFI/BOOT/BOOTX64.EFI), one loader entry, no menu, no editing of
# the command line at the console.
efi="$root/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
[[ -s $efi ]] || { echo "systemd-boot-efi gave no $efi" >&2; exit 1; }
esp_mib=256
esp="$work/esp.vfat"
rm -f "$esp"
mkfs.vfat -F 32 -n ESP -i 50d0f11e -C "$esp" $((esp_mib * 1024)) >/dev/null
printf 'default podvm.conf\ntimeout 0\neditor no\nconsole-mode keep\n' >"$work/loader.conf"
printf 'title Pod VM (Debian %s)\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s\n' \
    "$kver" "$cmdline" >"$work/podvm.conf"
export MTOOLS_SKIP_CHECK=1
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
mcopy -i "$esp" "$efi" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$work/loader.conf" ::/loader/loader.conf
mcopy -i "$esp" "$work/podvm.conf" ::/loader/entries/podvm.conf
mcopy -i "$esp" "$dest/vmlinuz" ::/vmlinuz
mcopy -i "$esp" "$dest/initrd.img" ::/initrd.img

# The root partition fills the disk to the next whole GiB with at least
# 30 % and 256 MiB free; GPT takes the first and the last MiB.
used_mib=$(du -sm "$root" | cut -f1)
need_mib=$((1 + esp_mib + used_mib * 13 / 10 + 256 + 1))
disk_mib=$(((need_mib + 1023) / 1024 * 1024))
root_mib=$((disk_mib - 1 - esp_mib - 1))
rootimg="$work/root.ext4"
rm -f "$rootimg"
truncate -s "${root_mib}M" "$rootimg"
mkfs.ext4 -q -L podvm-root -d "$root" "$rootimg"

disk="$dest/disk.raw"
rm -f "$disk"
truncate -s "${disk_mib}M" "$disk"
# GPT partition types: C12A7328-… the EFI system partition, 4F68BCE3-…
# the x86-64 root of the Discoverable Partitions Specification.
sfdisk --quiet "$disk" <<EOF
label: gpt
unit: sectors
first-lba: 2048
start=2048, size=$((esp_mib * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="ESP"
start=$(((1 + esp_mib) * 2048)), size=$((root_mib * 2048)), type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name="podvm-root"
EOF
dd if="$esp" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$rootimg" of="$disk" bs=1M seek=$((1 + esp_mib)) conv=notrunc,sparse status=none
rm -f "$esp" "$rootimg"
echo "podvm-image: disk.raw (${disk_mib} MiB, ${used_mib} MiB of files) made in ${SECONDS}s" >&2
