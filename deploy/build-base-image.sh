#!/usr/bin/env bash
# Builds the Debian 12 base image the deploy test uses, from a debootstrap root
# filesystem and `docker import`, because no image can be pulled on the project's
# machines. It serves twice: as the "host" the Ansible playbook is run against (systemd
# as PID 1, python3 for Ansible and python3-apt for its apt module (the package install
# method), sudo for `become`, curl for the walk-through), and as
# BASE_IMAGE for the Dockerfile in place of debian:bookworm-slim.
#
# The image is tagged with a hash of this recipe, so it is built once and reused until
# the recipe changes. Prints the tag on standard output.
#
#   deploy/build-base-image.sh            # build if missing, print the tag
#   deploy/build-base-image.sh --force    # rebuild
#
# The Debian mirror is the one this machine's apt is configured with (or
# AETHER_DEBIAN_MIRROR).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
AETHER_LOG_TAG=base-image

SUITE=bookworm
PACKAGES=systemd,systemd-sysv,dbus,python3,python3-apt,sudo,curl,ca-certificates,iproute2,procps
# Units that have nothing to do in a container, or fail there and make the host
# "degraded" for no reason.
MASK_UNITS=(
    getty@tty1.service console-getty.service serial-getty@.service
    systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket
    systemd-udev-trigger.service systemd-modules-load.service sys-kernel-config.mount
    sys-kernel-debug.mount sys-kernel-tracing.mount systemd-remount-fs.service
    systemd-firstboot.service systemd-timesyncd.service apt-daily.timer
    apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer
)

recipe_hash=$( (cat "${BASH_SOURCE[0]}"; echo "$SUITE $PACKAGES ${MASK_UNITS[*]}") | sha256sum | cut -c1-12)
TAG=aether-test-base:$SUITE-$recipe_hash

if [[ ${1:-} != --force ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
    say "cached: $TAG"
    echo "$TAG"
    exit 0
fi

apt_install debootstrap debian-archive-keyring
mirror=$(debian_mirror "$SUITE") || die "no apt source for Debian $SUITE found in /etc/apt; set AETHER_DEBIAN_MIRROR"

workdir=$(mktemp -d /var/tmp/aether-rootfs.XXXXXX)
cleanup() {
    # debootstrap may leave proc/sys mounted when it fails half way.
    local m
    for m in $(awk -v d="$workdir" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$workdir"
}
trap cleanup EXIT

rootfs=$workdir/rootfs
say "debootstrap $SUITE (minbase + $PACKAGES)"
if ! debootstrap --variant=minbase --include="$PACKAGES" \
    --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
    "$SUITE" "$rootfs" "$mirror" >"$workdir/debootstrap.log" 2>&1; then
    tail -n 30 "$workdir/debootstrap.log" >&2
    [[ -f $rootfs/debootstrap/debootstrap.log ]] && tail -n 30 "$rootfs/debootstrap/debootstrap.log" >&2
    die "debootstrap failed"
fi

say "trimming the root filesystem"
for unit in "${MASK_UNITS[@]}"; do
    ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
done
# Each container gets its own machine id at boot.
: >"$rootfs/etc/machine-id"
rm -f "$rootfs/var/lib/dbus/machine-id"
# The image has no apt sources: nothing in the test may reach a registry from a container.
: >"$rootfs/etc/apt/sources.list"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* \
    "$rootfs"/var/log/*.log "$rootfs"/debootstrap

say "importing as $TAG"
tar --numeric-owner -C "$rootfs" -c . |
    docker import \
        --change 'CMD ["/sbin/init"]' \
        --change "LABEL org.opencontainers.image.description=\"AetherStore deploy-test base, Debian $SUITE from debootstrap\"" \
        - "$TAG" >/dev/null
# Earlier recipes' images are of no further use.
docker image ls --format '{{.Repository}}:{{.Tag}}' aether-test-base | grep -vxF "$TAG" |
    xargs -r docker image rm >/dev/null 2>&1 || true
say "built $TAG ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
echo "$TAG"
