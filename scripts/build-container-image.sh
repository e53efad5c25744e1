#!/usr/bin/env bash
# Build the devcontainer image of the real-VM tests (tests/realvm/) once: a small Debian 13
# (trixie) glibc root filesystem as one gzip-compressed tar, the single layer of the
# image that tests/support/oci_registry.py serves to the VM's Docker. Cached outside the
# repository, keyed by a hash of this script (the recipe): a change here builds a new
# one. Prints the directory holding it as the last line of stdout; progress goes to
# stderr.
#
# The directory holds:
#   layer.tar.gz  the root filesystem (paths relative to /, numeric owners)
#   diff_id       sha256 of the uncompressed tar, as "sha256:<hex>" (the image config's
#                 rootfs.diff_ids entry)
#   recipe        what was built (release, mirror, packages, build time)
#
# What the scenario runs in the container: bash, python3 (a dev server:
# `python3 -m http.server`), git and ca-certificates (Claude Code and the workspace's
# repository), procps, curl. No Docker is needed to build it: debootstrap, apt in a
# chroot, tar. debootstrap and chroot need root: when not root, they run under sudo.
#
# Environment: AGENTSPACES_CACHE (cache root, default ~/.cache/agentspaces),
# AGENTSPACES_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

RELEASE=trixie
MIRROR="${AGENTSPACES_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES=(python3 git ca-certificates procps curl)
CACHE_ROOT="${AGENTSPACES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentspaces}"
KEY="debian-13-$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"
OUT="$CACHE_ROOT/container-image/$KEY"

log() { printf '[container-image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [ -f "$OUT/layer.tar.gz" ] && [ -f "$OUT/diff_id" ]; then
  log "cached: $OUT"
  echo "$OUT"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v debootstrap >/dev/null 2>&1 && ! [ -x /usr/sbin/debootstrap ]; then
  log "installing debootstrap with apt-get"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    debootstrap >&2 || {
    $SUDO apt-get update >&2
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      debootstrap >&2
  } || die "could not install debootstrap"
fi
export PATH="$PATH:/usr/sbin:/sbin"

mkdir -p "$CACHE_ROOT/container-image"
work=$(mktemp -d "$CACHE_ROOT/container-image/.build-$KEY.XXXXXX")
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

log "installing ${PACKAGES[*]} inside the rootfs"
$SUDO tee "$root/etc/apt/sources.list" >/dev/null <<EOF
deb $MIRROR $RELEASE main
deb $MIRROR $RELEASE-updates main
deb http://deb.debian.org/debian-security $RELEASE-security main
EOF
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
for m in dev/pts dev sys proc; do $SUDO umount "$root/$m"; done
$SUDO rm -f "$root/usr/sbin/policy-rc.d"

log "trimming (docs, man pages, locales, apt lists) and packing the layer"
$SUDO rm -rf "$root/usr/share/doc/"* "$root/usr/share/man/"* "$root/usr/share/info/"* \
  "$root/usr/share/locale/"* "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"* \
  "$root/var/log/"*.log "$root/var/cache/debconf/"*-old
# Docker provides these at run time; a container's /dev is its own.
$SUDO rm -rf "$root/dev/"* "$root/proc/"* "$root/sys/"* "$root/run/"* "$root/tmp/"*
$SUDO truncate -s 0 "$root/etc/machine-id"
$SUDO rm -f "$root/etc/hostname" "$root/etc/resolv.conf"
# gzip -n: no name or time stamp in the gzip header.
$SUDO tar --numeric-owner --sort=name -C "$root" -cf - . | gzip -n -6 >"$work/layer.tar.gz"
echo "sha256:$(gzip -dc "$work/layer.tar.gz" | sha256sum | cut -d' ' -f1)" >"$work/diff_id"
{
  echo "release: $RELEASE"
  echo "mirror: $MIRROR"
  echo "packages: ${PACKAGES[*]}"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(($(date +%s) - start))s"
} >"$work/recipe"
$SUDO rm -rf "$root"
[ -z "$SUDO" ] || $SUDO chown -R "$(id -u):$(id -g)" "$work"
chmod 755 "$work"
chmod 644 "$work/layer.tar.gz" "$work/diff_id" "$work/recipe"

rm -rf "$OUT"
mv "$work" "$OUT"
trap - EXIT
log "built $OUT in $(($(date +%s) - start))s ($(du -h "$OUT/layer.tar.gz" | cut -f1) compressed)"
echo "$OUT"
