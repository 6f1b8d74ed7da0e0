#!/usr/bin/env bash
# Builds the static nutshell-agent and packs the pod guest initramfs.
#
#   rootfs/build-guest.sh <out-dir>
#
# Output: <out-dir>/initramfs.cpio, an uncompressed newc cpio owned by root:
#   /init          the agent (static glibc binary, stripped)
#   /dev/console   char 5:1, so the kernel can give /init its stdio before
#                  the agent mounts devtmpfs (only when run as root; without
#                  it the kernel's built-in initramfs usually provides one,
#                  and the agent reopens stdio on devtmpfs's console anyway)
#   /proc /sys /dev /run /tmp /etc   empty mount points / directories
#
# Progress goes to stderr; the last stdout line is the initramfs path.
# The agent is built in target/static so the normal build is not disturbed.
set -euo pipefail

readonly TARGET=x86_64-unknown-linux-gnu

die() {
    echo "build-guest.sh: $*" >&2
    exit 1
}

[[ $# -eq 1 ]] || die "usage: $0 <out-dir>"
for tool in cargo cpio file ldd; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

workspace=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1"
out_dir=$(cd "$1" && pwd)
target_dir="$workspace/target/static"
agent="$target_dir/$TARGET/release/nutshell-agent"

# crt-static with an explicit --target: only the agent is linked statically,
# build scripts and proc-macros stay dynamic host binaries. RUSTFLAGS is
# replaced, not extended (CARGO_ENCODED_RUSTFLAGS would take precedence).
echo "build-guest.sh: building static nutshell-agent in $target_dir" >&2
(
    cd "$workspace"
    unset CARGO_ENCODED_RUSTFLAGS
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release -p nutshell-agent \
        --target "$TARGET" --target-dir "$target_dir" >&2
) || die "cargo build of nutshell-agent failed"

file_info=$(file -b "$agent")
case "$file_info" in
*"statically linked"* | *"static-pie linked"*) ;;
*) die "$agent is not static: $file_info" ;;
esac
# ldd exits non-zero for static binaries; what matters is no library mapping.
if ldd "$agent" 2>&1 | grep -q '=>'; then
    die "$agent links shared libraries: $(ldd "$agent" 2>&1 | tr '\n' ' ')"
fi

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
find "$staging" -exec touch -h -d @0 {} +
(
    cd "$staging"
    find . -mindepth 1 | LC_ALL=C sort |
        cpio --quiet -o -H newc --owner=0:0 --reproducible
) >"$out_dir/initramfs.cpio.tmp"
mv "$out_dir/initramfs.cpio.tmp" "$out_dir/initramfs.cpio"

echo "agent: $(stat -c %s "$agent") bytes ($(stat -c %s "$staging/init") stripped), $file_info"
echo "initramfs: $(stat -c %s "$out_dir/initramfs.cpio") bytes"
echo "$out_dir/initramfs.cpio"
