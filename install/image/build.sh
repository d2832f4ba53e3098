#!/usr/bin/env bash
# Builds the adaptor's OCI image without Docker: the root file system comes
# from Debian packages (mmdebstrap, extract variant: no maintainer scripts,
# no package manager in the image), the image is assembled with umoci, and
# the result is an OCI archive that `ctr images import`, `skopeo copy
# oci-archive:...` and registries take.
#
#   install/image/build.sh [--flavor cloud|libvirt] [--bin-dir DIR]
#                          [--build] [--tag TAG] [--repository REPO] [--out FILE]
#
#   --flavor    cloud (default): the aws, azure and gcp providers; the root
#               file system is glibc, libgcc and the CA certificates.
#               libvirt: the adaptor built with the libvirt feature, plus
#               libvirt's client library and what it links (tag suffix
#               -libvirt; providers/libvirt.yaml selects it).
#   --bin-dir   where the binaries are (default $CARGO_TARGET_DIR/release).
#               The adaptor must match the flavour: it is refused when it
#               links libvirt in the cloud flavour, or does not in the
#               libvirt one.
#   --build     run `cargo build --release` with the flavour's features
#               first (the AWS SDK alone takes ~14 min cold on 2 cores).
#   --tag       default: the workspace version, plus -g<commit>[-dirty]
#               when the tree is not at a v<version> tag; -libvirt is
#               appended for that flavour.
#   --repository  default localhost/peerpods/cloud-api-adaptor (the chart's
#               image.repository default).
#   --out       the OCI archive (default $CARGO_TARGET_DIR/image/<flavour>.oci.tar).
#
# The image holds /usr/local/bin/{cloud-api-adaptor, peerpodctl,
# agent-protocol-forwarder, process-user-data} and, where --bin-dir has
# it, peerpods-webhook, in a layer of their own above the Debian layer;
# peerpod-ctrl is a link to cloud-api-adaptor, which runs the controller
# under that name (one copy of the cloud SDKs: a second binary with them
# added 15 MiB compressed). The entrypoint is cloud-api-adaptor, which
# picks its provider from CLOUD_PROVIDER. The Debian layer is cached in
# $CARGO_TARGET_DIR/image/base-<flavour>-<hash of its inputs>. The last
# line printed is the archive's path; the line before it the image name.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../../scripts/lib.sh"

flavor=cloud bin_dir= build=0 tag= repository=localhost/peerpods/cloud-api-adaptor out=
while (($#)); do
    case $1 in
    --flavor) flavor=$2; shift 2 ;;
    --bin-dir) bin_dir=$2; shift 2 ;;
    --build) build=1; shift ;;
    --tag) tag=$2; shift 2 ;;
    --repository) repository=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
# libvirt comes from bookworm-backports, as on the build host (the binary
# links the backports libvirt-dev; an older libvirt0 lacks its symbols).
case $flavor in
cloud) features=aws,azure,gcp; pkgs=(libc6 libgcc-s1 ca-certificates); release=bookworm ;;
libvirt) features=aws,azure,gcp,libvirt; pkgs=(libc6 libgcc-s1 ca-certificates libvirt0); release=bookworm-backports ;;
*) echo "--flavor must be cloud or libvirt, not $flavor" >&2; exit 2 ;;
esac
for t in mmdebstrap umoci python3; do
    command -v "$t" >/dev/null || { echo "$t not found: run scripts/setup.sh --image" >&2; exit 1; }
done
[[ $(id -u) == 0 ]] || { echo "build.sh needs root (mmdebstrap --mode=root, umoci unpack)" >&2; exit 1; }

root_dir=$(cd "$here/../.." && pwd)
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$root_dir/Cargo.toml")
if [[ -z $tag ]]; then
    tag=$version
    if git -C "$root_dir" rev-parse --git-dir >/dev/null 2>&1 &&
        [[ $(git -C "$root_dir" tag --points-at HEAD) != *"v$version"* ]]; then
        tag+="-g$(git -C "$root_dir" rev-parse --short=10 HEAD)"
        git -C "$root_dir" diff --quiet HEAD -- || tag+=-dirty
    fi
fi
[[ $flavor == libvirt ]] && tag+=-libvirt
image="$repository:$tag"

if ((build)); then
    log "cargo build --release (features $features)"
    (cd "$root_dir" && cargo build --release --bins -p cloud-api-adaptor --features "$features" \
        -p agent-protocol-forwarder)
    (cd "$root_dir" && cargo build --release --bins -p peerpods-webhook)
    bin_dir=${bin_dir:-$CARGO_TARGET_DIR/release}
fi
bin_dir=${bin_dir:-$CARGO_TARGET_DIR/release}
bins=(cloud-api-adaptor peerpodctl agent-protocol-forwarder process-user-data)
for b in "${bins[@]}"; do
    [[ -x $bin_dir/$b ]] || { echo "$bin_dir/$b is missing: build it (or pass --build / --bin-dir)" >&2; exit 1; }
done
# The webhook, where built (the chart's webhook.enabled needs it).
if [[ -x $bin_dir/peerpods-webhook ]]; then bins+=(peerpods-webhook); fi
if readelf -d "$bin_dir/cloud-api-adaptor" | grep -q 'libvirt\.so'; then
    [[ $flavor == libvirt ]] || { echo "$bin_dir/cloud-api-adaptor links libvirt: use --flavor libvirt, or build it without the libvirt feature" >&2; exit 1; }
else
    [[ $flavor == cloud ]] || { echo "$bin_dir/cloud-api-adaptor does not link libvirt: build it with --features libvirt for --flavor libvirt" >&2; exit 1; }
fi

cache="$CARGO_TARGET_DIR/image"
mkdir -p "$cache"
out=${out:-$cache/$flavor.oci.tar}
mirror=${IMAGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${IMAGE_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
sources=("deb $mirror bookworm main" "deb $mirror bookworm-updates main"
    "deb $security bookworm-security main" "deb $mirror bookworm-backports main")

# --- the Debian layer (cached) ---
base_hash=$( (printf '%s\n' "${pkgs[@]}" "${sources[@]}" "$release"; sed -n '/^# --- the Debian layer/,/^# --- end of the Debian layer/p' "$0") | sha256sum | cut -c1-16)
base="$cache/base-$flavor-$base_hash"
if [[ ! -e $base/.complete ]]; then
    log "making the $flavor root file system from Debian packages (${pkgs[*]})"
    rm -rf "$base"
    mkdir -p "$base"
    mmdebstrap --quiet --variant=extract --mode=root \
        --include="$(IFS=,; echo "${pkgs[*]}")" \
        --aptopt='Acquire::Languages "none"' \
        --aptopt="APT::Default-Release \"$release\"" \
        bookworm "$base/rootfs" "${sources[@]}"
    r="$base/rootfs"
    # Nothing of Debian's runs in the image: no shell, no package manager,
    # no maintainer scripts (extract variant). What the binaries do not
    # load goes: documentation, locales, perl and debconf (dependencies of
    # ca-certificates' scripts), programs, and the iconv modules (glibc
    # converts UTF-8 itself).
    rm -rf "$r"/usr/share/{doc,man,info,locale,lintian,bash-completion,gdb,perl5,debconf,pixmaps,bug} \
        "$r"/usr/bin "$r"/usr/sbin "$r"/usr/lib/x86_64-linux-gnu/perl-base \
        "$r"/usr/lib/x86_64-linux-gnu/gconv "$r"/usr/lib/ssl/misc \
        "$r"/var/cache/* "$r"/var/lib/apt "$r"/var/lib/dpkg "$r"/var/log/* \
        "$r"/etc/apt "$r"/etc/dpkg "$r"/etc/debconf.conf "$r"/etc/ca-certificates \
        "$r"/etc/fstab "$r"/etc/hostname "$r"/etc/resolv.conf "$r"/dev/*
    # openssl's libraries came for ca-certificates' scripts; libvirt's
    # libssh links them, our binaries (rustls) do not.
    [[ $flavor == libvirt ]] || rm -rf "$r"/usr/lib/x86_64-linux-gnu/{libssl.so.3,libcrypto.so.3,engines-3,ossl-modules} "$r"/usr/lib/ssl
    mkdir -p "$r"/usr/bin "$r"/usr/local/bin "$r"/root "$r"/tmp "$r"/etc/ssl/certs \
        "$r"/run "$r"/var/lib
    chmod 1777 "$r/tmp"
    # The CA bundle ca-certificates' script would make (rustls reads it
    # through the platform's usual path).
    cat "$r"/usr/share/ca-certificates/mozilla/*.crt >"$r/etc/ssl/certs/ca-certificates.crt"
    # root's user record: libvirt looks up the user's home directory.
    printf 'root:x:0:0:root:/root:/usr/sbin/nologin\n' >"$r/etc/passwd"
    printf 'root:x:0:\n' >"$r/etc/group"
    printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$r/etc/nsswitch.conf"
    # What went in, for people (no dpkg database in the image).
    printf '%s\n' "${pkgs[@]}" >"$base/packages"
    touch "$base/.complete"
fi
# --- end of the Debian layer ---

# --- assemble the image ---
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
oci="$work/oci"
umoci init --layout "$oci"
umoci new --image "$oci:$tag"
umoci unpack --image "$oci:$tag" "$work/bundle" >/dev/null
cp -a "$base/rootfs/." "$work/bundle/rootfs/"
umoci repack --refresh-bundle --image "$oci:$tag" --history.created_by "Debian packages: ${pkgs[*]}" "$work/bundle"
for b in "${bins[@]}"; do
    install -m 0755 "$bin_dir/$b" "$work/bundle/rootfs/usr/local/bin/$b"
    strip --strip-unneeded "$work/bundle/rootfs/usr/local/bin/$b"
done
ln -s cloud-api-adaptor "$work/bundle/rootfs/usr/local/bin/peerpod-ctrl"
umoci repack --image "$oci:$tag" --history.created_by "peer pods binaries: ${bins[*]} peerpod-ctrl (link)" "$work/bundle"
umoci config --image "$oci:$tag" \
    --config.entrypoint /usr/local/bin/cloud-api-adaptor \
    --config.env PATH=/usr/local/bin:/usr/bin \
    --config.workingdir / \
    --config.label org.opencontainers.image.title=cloud-api-adaptor \
    --config.label org.opencontainers.image.version="$tag" \
    --config.label org.opencontainers.image.licenses=Apache-2.0 \
    --config.label io.peerpods.image.flavor="$flavor" \
    --config.label io.peerpods.image.features="$features"
umoci gc --layout "$oci"
# containerd names an imported image by this annotation (umoci's own
# ref.name holds only the tag).
python3 - "$oci/index.json" "$image" <<'PY'
import json, sys
path, name = sys.argv[1], sys.argv[2]
with open(path) as f:
    index = json.load(f)
for m in index["manifests"]:
    m.setdefault("annotations", {})["io.containerd.image.name"] = name
with open(path, "w") as f:
    json.dump(index, f)
PY
mkdir -p "$(dirname "$out")"
tar -C "$oci" -cf "$out.tmp" .
mv "$out.tmp" "$out"
log "image $image: $(du -h "$out" | cut -f1) ($(du -sh "$base/rootfs" | cut -f1) Debian layer unpacked)"
echo "$image"
echo "$out"
