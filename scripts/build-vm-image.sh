#!/usr/bin/env bash
# Build a Debian 13 (trixie) cloud disk for real VMs under QEMU once, and cache it
# outside the repository, keyed by a hash of this script (the recipe): a change here
# builds a new image. Prints the directory holding it as the last line of stdout;
# progress goes to stderr.
#
# The directory holds:
#   root.img   raw ext4 filesystem of the whole disk (boot it as root=/dev/vda)
#   vmlinuz    Debian's cloud kernel (linux-image-cloud-amd64)
#   initrd     its initramfs (virtio-blk and virtio-net are modules in that kernel)
#   recipe     what was built (release, mirror, packages, build time)
#
# The image has systemd, udev, ifupdown with a DHCP client, cloud-init restricted to
# the NoCloud datasource (a second drive labelled "cidata"), ca-certificates, sudo,
# python3 (cloud-init's own interpreter), e2fsprogs, openssh-server and curl. It has no boot loader: QEMU starts the kernel
# directly (-kernel/-initrd). Every run also checks that QEMU can start that kernel
# under TCG and fails with a clear message when it cannot.
#
# Installs its prerequisites with apt-get when missing (qemu-system-x86, qemu-utils,
# debootstrap, e2fsprogs, dosfstools, mtools). debootstrap, chroot and mke2fs of a
# root-owned tree need root: when not root, they run under sudo.
#
# The guest trusts the CAs this host added locally ($HOST_CAS): a host behind a
# TLS-inspecting egress proxy (as these CI machines are) reaches HTTPS registries only
# through it, and so do its guests. They go into the guest's system store, and Node
# (whose own CA list ignores that store) gets it as NODE_EXTRA_CA_CERTS for every
# service; a plain host adds none, and the image is the plain one. They are part of the
# cache key.
#
# Two flavors. `base` (the default) is the stock image, like Hetzner's debian-13.
# `workspace` (argument --workspace) also holds the workspace software, installed at
# build time at the host's speed: the packages of the debian-13 cloud-config, the
# bootstrap's install steps (`bootstrap-debian-13.sh --bake`: Node, Caddy, the npm
# globals) and the pinned Claude Code build (agentspaces_vm.claude_install). A VM booted
# from it runs the same user-data and bootstrap, whose steps find each piece at its
# pinned version and skip it; what a pin changed is installed at boot as on the stock
# image. Those three files are part of its cache key. Under TCG this turns a boot from
# over 25 minutes (npm compiles CloudCLI's native modules when GitHub, where their
# prebuilt binaries live, is out of reach) into minutes (docs/vm.md).
#
# Environment: AGENTSPACES_CACHE (cache root, default ~/.cache/agentspaces),
# AGENTSPACES_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

RELEASE=trixie
MIRROR="${AGENTSPACES_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FLAVOR=base
case "${1:-}" in
  "") ;;
  --workspace) FLAVOR=workspace ;;
  *) echo "usage: $0 [--workspace]" >&2; exit 2 ;;
esac
IMAGE_SIZE=3G
# The workspace flavor's recipe, beyond this script.
BAKED=(cloudinit/cloud-config-debian-13.yaml cloudinit/bootstrap-debian-13.sh
  vm/agentspaces_vm/claude_install.py)
[ "$FLAVOR" = base ] || IMAGE_SIZE=8G
# Installed with apt inside the rootfs after debootstrap (apt resolves the dependencies).
# e2fsprogs: cloud-init grows the root filesystem (resize2fs) to the VM's disk size;
# openssh-server and curl: on Hetzner's own debian-13 image too (cloud-init makes the
# host keys).
PACKAGES=(systemd-sysv udev iproute2 ifupdown isc-dhcp-client cloud-init ca-certificates
  sudo python3-minimal e2fsprogs openssh-server curl linux-image-cloud-amd64 initramfs-tools)
CACHE_ROOT="${AGENTSPACES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentspaces}"
HOST_CAS=/usr/local/share/ca-certificates
host_cas() { find "$HOST_CAS" -type f -name '*.crt' -print0 2>/dev/null | sort -z; }
recipe_files() {
  cat "${BASH_SOURCE[0]}"
  host_cas | xargs -0r cat
  [ "$FLAVOR" = base ] || (cd "$REPO" && cat "${BAKED[@]}")
}
KEY="debian-13-$FLAVOR-$(recipe_files | sha256sum | cut -c1-16)"
OUT="$CACHE_ROOT/vm-image/$KEY"

log() { printf '[vm-image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# --- prerequisites ----------------------------------------------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
command -v mke2fs >/dev/null 2>&1 || [ -x /usr/sbin/mke2fs ] || need+=(e2fsprogs)
command -v mkfs.vfat >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.vfat ] || need+=(dosfstools)
command -v mcopy >/dev/null 2>&1 || need+=(mtools)
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]} with apt-get"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    "${need[@]}" >&2 || {
    $SUDO apt-get update >&2
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      "${need[@]}" >&2
  } || die "could not install ${need[*]}"
fi
export PATH="$PATH:/usr/sbin:/sbin"

# --- can QEMU run here? -----------------------------------------------------------------
# Start the cached (or a just-built) kernel with an init that exits at once: the kernel
# panics and QEMU quits (-no-reboot). A working QEMU prints the kernel banner in ~3 s.
check_qemu() {
  local dir="$1" out rc=0
  out=$(timeout 60 qemu-system-x86_64 -accel tcg -cpu max -m 256 -display none -no-reboot \
    -nodefaults -serial stdio -kernel "$dir/vmlinuz" -initrd "$dir/initrd" \
    -append "console=ttyS0 panic=-1 rdinit=/bin/false" </dev/null 2>&1) || rc=$?
  if ! grep -q "Linux version" <<<"$out"; then
    printf '%s\n' "$out" | tail -n 20 >&2
    die "QEMU cannot run a VM on this machine (qemu-system-x86_64 -accel tcg exited $rc" \
      "without booting the kernel); real VMs need a working qemu-system-x86_64"
  fi
}

if [ -f "$OUT/root.img" ] && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initrd" ]; then
  log "cached: $OUT"
  check_qemu "$OUT"
  echo "$OUT"
  exit 0
fi

# --- build ------------------------------------------------------------------------------
mkdir -p "$CACHE_ROOT/vm-image"
work=$(mktemp -d "$CACHE_ROOT/vm-image/.build-$KEY.XXXXXX")
root="$work/rootfs"
cleanup() {
  for m in dev/pts dev sys proc; do
    mountpoint -q "$root/$m" 2>/dev/null && $SUDO umount -l "$root/$m" || true
  done
  $SUDO rm -rf "$work"
}
trap cleanup EXIT
start=$(date +%s)

log "debootstrap $RELEASE (minbase) from $MIRROR (first build only: ~1 min)"
$SUDO debootstrap --variant=minbase "$RELEASE" "$root" "$MIRROR" >&2 \
  || die "debootstrap $RELEASE from $MIRROR failed"

log "installing ${#PACKAGES[@]} packages inside the rootfs (cloud-init, kernel, ...)"
$SUDO tee "$root/etc/apt/sources.list" >/dev/null <<EOF
deb $MIRROR $RELEASE main
deb $MIRROR $RELEASE-updates main
deb http://deb.debian.org/debian-security $RELEASE-security main
EOF
# No services start inside the chroot.
printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$root/usr/sbin/policy-rc.d" >/dev/null
$SUDO chmod 755 "$root/usr/sbin/policy-rc.d"
$SUDO mount -t proc proc "$root/proc"
$SUDO mount -t sysfs sys "$root/sys"
$SUDO mount --bind /dev "$root/dev"
$SUDO mount --bind /dev/pts "$root/dev/pts"
in_root() { $SUDO chroot "$root" env DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"; }
in_root apt-get update >&2
in_root apt-get install -y --no-install-recommends "${PACKAGES[@]}" >&2
in_root apt-get clean >&2
cas=$(host_cas | xargs -0r -n1 basename | tr '\n' ' ')
if [ -n "$cas" ]; then
  log "trusting this host's local CAs in the guest: $cas"
  host_cas | $SUDO xargs -0r cp -t "$root/usr/local/share/ca-certificates/"
  in_root update-ca-certificates >&2
  $SUDO mkdir -p "$root/etc/systemd/system.conf.d"
  $SUDO tee "$root/etc/systemd/system.conf.d/90-agentspaces-host-ca.conf" >/dev/null <<'EOF'
# Set by agentspaces' scripts/build-vm-image.sh: Node trusts the system store too.
[Manager]
DefaultEnvironment=NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
EOF
fi
if [ "$FLAVOR" = workspace ]; then
  bake_start=$(date +%s)
  # The cloud-config's package list: the lines "  - name" under "packages:".
  mapfile -t baked_packages < <(awk '/^packages:/ {p = 1; next} /^[^ #]/ {p = 0}
    p && /^  - / {print $2}' "$REPO/cloudinit/cloud-config-debian-13.yaml")
  [ "${#baked_packages[@]}" -gt 0 ] || die "no packages in cloud-config-debian-13.yaml"
  log "workspace flavor: apt ${baked_packages[*]}"
  # With their Recommends, as cloud-init's `packages` installs them.
  in_root apt-get install -y "${baked_packages[@]}" >&2
  in_root apt-get clean >&2
  log "workspace flavor: the bootstrap's install steps (Node, Caddy, npm globals)"
  $SUDO install -d "$root/tmp/bake"
  $SUDO cp "$REPO/cloudinit/bootstrap-debian-13.sh" "$root/tmp/bake/bootstrap.sh"
  $SUDO cp -r "$REPO/vm/agentspaces_vm" "$root/tmp/bake/agentspaces_vm"
  in_root bash /tmp/bake/bootstrap.sh --bake >&2 || die "bootstrap-debian-13.sh --bake failed"
  log "workspace flavor: Claude Code (the pinned build, from npm)"
  in_root env PYTHONPATH=/tmp/bake PATH=/usr/local/bin:/usr/bin:/bin \
    python3 -m agentspaces_vm.claude_install /var/lib/agentspaces/claude-code >&2 \
    || die "installing Claude Code failed"
  $SUDO rm -rf "$root/tmp/bake" "$root/root/.npm" "$root/root/.cache"
  # Docker stays off until the bootstrap has the network guards up: at boot, systemd
  # loads units before cloud-init writes Docker's drop-in that requires them.
  in_root systemctl disable docker.service docker.socket >&2
  log "workspace flavor: baked in $(($(date +%s) - bake_start))s"
fi
for m in dev/pts dev sys proc; do $SUDO umount "$root/$m"; done
$SUDO rm -f "$root/usr/sbin/policy-rc.d"

log "configuring cloud-init (NoCloud only), networking and the console"
$SUDO tee "$root/etc/cloud/cloud.cfg.d/90-agentspaces.cfg" >/dev/null <<'EOF'
# Set by agentspaces' scripts/build-vm-image.sh: the seed is a drive labelled "cidata".
datasource_list: [NoCloud, None]
# Hetzner's images have no account at uid 1000 (their default user is root), and the
# workspace bootstrap gives that uid to CloudCLI's user. Debian's default user stays,
# for logging in, but off that uid.
system_info:
  default_user:
    uid: 1001
EOF
$SUDO tee "$root/etc/fstab" >/dev/null <<'EOF'
/dev/vda / ext4 defaults,errors=remount-ro 0 1
EOF
$SUDO tee "$root/etc/network/interfaces" >/dev/null <<'EOF'
# cloud-init writes the NIC's configuration into interfaces.d.
auto lo
iface lo inet loopback
source /etc/network/interfaces.d/*
EOF
# A fresh machine-id on every boot of a copy; no host name of the builder.
$SUDO truncate -s 0 "$root/etc/machine-id"
$SUDO rm -f "$root/var/lib/dbus/machine-id" "$root/etc/hostname"
$SUDO rm -rf "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"*.bin

log "copying the kernel and initramfs; making the ext4 image ($IMAGE_SIZE, sparse)"
kernel=$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n 1)
initrd=$(find "$root/boot" -maxdepth 1 -name 'initrd.img-*' | sort -V | tail -n 1)
[ -n "$kernel" ] && [ -n "$initrd" ] || die "no kernel or initramfs in the rootfs /boot"
$SUDO cp "$kernel" "$work/vmlinuz"
$SUDO cp "$initrd" "$work/initrd"
$SUDO mke2fs -q -t ext4 -L agentspaces-root -d "$root" "$work/root.img" "$IMAGE_SIZE" >&2 \
  || die "mke2fs -d failed"
{
  echo "release: $RELEASE"
  echo "flavor: $FLAVOR"
  echo "mirror: $MIRROR"
  echo "kernel: $(basename "$kernel")"
  echo "packages: ${PACKAGES[*]}"
  echo "host CAs: ${cas:-none}"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(($(date +%s) - start))s"
} | $SUDO tee "$work/recipe" >/dev/null
$SUDO rm -rf "$root"
[ -z "$SUDO" ] || $SUDO chown -R "$(id -u):$(id -g)" "$work"
chmod 755 "$work"
chmod 644 "$work/vmlinuz" "$work/initrd" "$work/root.img" "$work/recipe"

check_qemu "$work"
rm -rf "$OUT"
mv "$work" "$OUT"
trap - EXIT
# Earlier recipes of this flavor (gigabytes each); a VM still running from one keeps
# its open file.
find "$CACHE_ROOT/vm-image" -mindepth 1 -maxdepth 1 -type d -name "debian-13-$FLAVOR-*" \
  ! -name "$KEY" -exec rm -rf {} + 2>/dev/null || true
log "built $OUT in $(($(date +%s) - start))s"
echo "$OUT"
