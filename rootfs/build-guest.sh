#!/usr/bin/env bash
# Builds the static nutshell-agent and packs the pod guest initramfs.
#
#   rootfs/build-guest.sh <out-dir> [--with-test-image <image-dir>]
#
# Output: <out-dir>/initramfs.cpio, an uncompressed newc cpio owned by root:
#   /init          the agent (static glibc binary, stripped)
#   /dev/console   char 5:1, so the kernel can give /init its stdio before
#                  the agent mounts devtmpfs (only when run as root; without
#                  it the kernel's built-in initramfs usually provides one,
#                  and the agent reopens stdio on devtmpfs's console anyway)
#   /proc /sys /dev /run /tmp /etc   empty mount points / directories
#
# With --with-test-image (<image-dir> made by rootfs/build-test-image.sh), a
# second archive <out-dir>/initramfs-test.cpio is written as well: the same
# content plus <image-dir>/rootfs under /images/busybox, the container rootfs
# of the end-to-end tests.
#
# Progress goes to stderr; the last stdout line is the initramfs path (the
# test initramfs with --with-test-image).
# The agent is built in target/static so the normal build is not disturbed.
set -euo pipefail


die() {
    echo "build-guest.sh: $*" >&2
    exit 1
}

usage="usage: $0 <out-dir> [--with-test-image <image-dir>]"
test_image=""
case $# in
1) ;;
3) [[ $2 == --with-test-image ]] || die "$usage"
   test_image=$(cd "$3" && pwd) || die "no image directory $3"
   [[ -x $test_image/rootfs/bin/busybox ]] ||
       die "$test_image/rootfs is not a test image (run rootfs/build-test-image.sh)" ;;
*) die "$usage" ;;
esac
for tool in cargo cpio file ldd; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

workspace=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1"
out_dir=$(cd "$1" && pwd)
# shellcheck source=rootfs/static-binary.sh
. "$workspace/rootfs/static-binary.sh"
agent=$(static_binary nutshell-agent nutshell-agent)

staging=$(mktemp -d "${TMPDIR:-/tmp}/nutshell-initramfs.XXXXXX")
trap 'rm -rf "$staging"' EXIT

mkdir -p "$staging"/{proc,sys,dev,run,tmp,etc}
chmod 0755 "$staging" "$staging"/{proc,sys,dev,run,etc}
chmod 1777 "$staging/tmp"
install -m 0755 "$agent" "$staging/init"
if command -v strip >/dev/null; then
    strip --strip-all "$staging/init"
fi
if ! mknod -m 0600 "$staging/dev/console" c 5 1 2>/dev/null; then
    echo "build-guest.sh: warning: cannot mknod /dev/console (not root?);" \
        "relying on the kernel's built-in initramfs for it" >&2
fi

# Sorted names, fixed mtimes and inode numbers: same inputs, same archive.
pack() {
    find "$staging" -exec touch -h -d @0 {} +
    (
        cd "$staging"
        find . -mindepth 1 | LC_ALL=C sort |
            cpio --quiet -o -H newc --owner=0:0 --reproducible
    ) >"$out_dir/$1.tmp"
    mv "$out_dir/$1.tmp" "$out_dir/$1"
}
pack initramfs.cpio
if [[ -n $test_image ]]; then
    mkdir -p "$staging/images/busybox"
    cp -a "$test_image/rootfs/." "$staging/images/busybox/"
    pack initramfs-test.cpio
fi

echo "agent: $(stat -c %s "$agent") bytes ($(stat -c %s "$staging/init") stripped), static"
echo "initramfs: $(stat -c %s "$out_dir/initramfs.cpio") bytes"
if [[ -n $test_image ]]; then
    echo "test initramfs: $(stat -c %s "$out_dir/initramfs-test.cpio") bytes"
    echo "$out_dir/initramfs-test.cpio"
else
    echo "$out_dir/initramfs.cpio"
fi
