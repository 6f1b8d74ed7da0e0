#!/usr/bin/env bash
# Build an uncompressed newc initramfs (cpio) from an init program and a list of files.
#
#   rootfs/build-initramfs.sh -o OUT.cpio --init FILE [--add SRC:DST]... [--dir DST]...
#
#   -o OUT.cpio     the archive to write (its directory must exist)
#   --init FILE     installed as /init, mode 0755
#   --add SRC:DST   copy SRC to DST inside the archive; symlinks are followed, modes kept,
#                   a directory is copied recursively; missing parent directories are created
#   --dir DST       create an empty directory DST inside the archive
#
# Every entry is owned by root (uid 0, gid 0); /dev/console (char 5,1) is always present so that
# the kernel can open the init's stdio. Creating that node needs CAP_MKNOD (run as root, or under
# fakeroot). The last line printed on stdout is the absolute path of the archive.
set -euo pipefail

usage() {
  echo "usage: build-initramfs.sh -o OUT.cpio --init FILE [--add SRC:DST]... [--dir DST]..." >&2
  exit 2
}
die() { echo "build-initramfs.sh: $*" >&2; exit 1; }

out="" init="" adds=() dirs=()
while [ $# -gt 0 ]; do
  case "$1" in
    -o|--output) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
    --init) [ $# -ge 2 ] || usage; init=$2; shift 2 ;;
    --add) [ $# -ge 2 ] || usage; adds+=("$2"); shift 2 ;;
    --dir) [ $# -ge 2 ] || usage; dirs+=("$2"); shift 2 ;;
    -h|--help) usage ;;
    *) echo "build-initramfs.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
[ -n "$out" ] || { echo "build-initramfs.sh: -o OUT.cpio is required" >&2; usage; }
[ -n "$init" ] || { echo "build-initramfs.sh: --init FILE is required" >&2; usage; }
[ -f "$init" ] || die "init program '$init' is not a file"
for tool in cpio mknod; do
  command -v "$tool" >/dev/null || die "missing tool '$tool'"
done

out_dir=$(cd "$(dirname "$out")" 2>/dev/null && pwd) || die "output directory of '$out' does not exist"
out="$out_dir/$(basename "$out")"

stage=$(mktemp -d "${TMPDIR:-/tmp}/build-initramfs.XXXXXX")
trap 'rm -rf "$stage" "$out.tmp"' EXIT

# A destination is always absolute inside the archive and may not climb out of it.
inside() {
  local dst=$1
  case "/$dst/" in
    */../*) die "destination '$dst' contains '..'" ;;
  esac
  echo "$stage/${dst#/}"
}

mkdir -p "$stage/dev"
for dir in "${dirs[@]}"; do
  target=$(inside "$dir")
  mkdir -p "$target"
done
for spec in "${adds[@]}"; do
  case "$spec" in
    *:*) src=${spec%%:*} dst=${spec#*:} ;;
    *) die "--add '$spec' is not SRC:DST" ;;
  esac
  [ -n "$src" ] && [ -n "$dst" ] || die "--add '$spec' is not SRC:DST"
  [ -e "$src" ] || die "--add source '$src' does not exist"
  target=$(inside "$dst")
  mkdir -p "$(dirname "$target")"
  if [ -d "$src" ]; then
    mkdir -p "$target"
    cp -RL --preserve=mode "$src/." "$target/"
  else
    cp -L --preserve=mode "$src" "$target"
  fi
done
cp -L "$init" "$stage/init"
chmod 0755 "$stage/init"
[ -e "$stage/dev/console" ] || mknod -m 0600 "$stage/dev/console" c 5 1 \
  || die "cannot create /dev/console (char 5,1): run as root or under fakeroot"

# Sorted, so that an archive's bytes depend only on its content (modulo mtimes).
(cd "$stage" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) \
  > "$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
