#!/usr/bin/env bash
# Build a nutshell kernel from Debian's linux-source-6.1, cached by content hash.
#
#   kernel-config/build.sh guest       -> the pod-guest kernel (guest.config)
#   kernel-config/build.sh test-host   -> the nested test host (guest.config + test-host.config)
#
# The result lives in $NUTSHELL_CACHE/kernel/<flavor>-<hash>/{vmlinux,bzImage,config}, where the hash
# covers the fragments, this script and the source package version: a second build is instant.
# The last line printed on stdout is that directory.
set -euo pipefail

flavor=${1:?usage: build.sh guest|test-host}
here=$(cd "$(dirname "$0")" && pwd)
case "$flavor" in
  guest) fragments=("$here/guest.config") ;;
  test-host) fragments=("$here/guest.config" "$here/test-host.config") ;;
  *) echo "build.sh: unknown kernel flavor '$flavor' (expected guest or test-host)" >&2; exit 2 ;;
esac

log() { echo "kernel[$flavor]: $*" >&2; }

if ! dpkg-query -W -f='${Status}' linux-source-6.1 2>/dev/null | grep -q 'ok installed'; then
  log "installing linux-source-6.1 and the kernel build dependencies"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-source-6.1 bc bison flex \
    libelf-dev libssl-dev lz4 xz-utils make gcc >&2
fi
for tool in bc bison flex lz4 make gcc; do
  command -v "$tool" >/dev/null || { log "missing build tool '$tool' (apt-get install $tool)"; exit 1; }
done

version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
hash=$( { echo "$version"; cat "${fragments[@]}" "$0"; } | sha256sum | cut -c1-16)
cache=${NUTSHELL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nutshell}
out="$cache/kernel/$flavor-$hash"
if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ]; then
  log "cached: $out"
  echo "$out"
  exit 0
fi

mkdir -p "$cache/kernel"
exec 9>"$cache/kernel/.lock-$flavor"
flock 9
if [ -f "$out/vmlinux" ]; then echo "$out"; exit 0; fi

src="$cache/kernel/src-$version"
if [ ! -f "$src/.extracted" ]; then
  log "extracting linux-source-6.1 ($version) to $src"
  rm -rf "$src"; mkdir -p "$src"
  tar -xaf /usr/src/linux-source-6.1.tar.xz -C "$src" --strip-components=1
  touch "$src/.extracted"
fi

obj=$(mktemp -d "$cache/kernel/build-$flavor.XXXXXX")
trap 'rm -rf "$obj"' EXIT
export ARCH=x86_64
start=$(date +%s)
log "configuring (tinyconfig + ${fragments[*]##*/}) in $obj"
make -s -C "$src" O="$obj" tinyconfig >&2
(cd "$src" && scripts/kconfig/merge_config.sh -n -O "$obj" "$obj/.config" "${fragments[@]}" >/dev/null)

# kconfig silently drops options whose dependencies are missing: check every fragment line.
missing=0
while IFS= read -r line; do
  if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
    grep -qx -- "$line" "$obj/.config" || { log "option lost in merge: $line (have: $(grep -E "^(# )?${BASH_REMATCH[1]}[= ]" "$obj/.config" || echo unset))"; missing=1; }
  elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
    if grep -q "^${BASH_REMATCH[1]}=" "$obj/.config"; then log "option should be unset: ${BASH_REMATCH[1]}"; missing=1; fi
  fi
done < <(cat "${fragments[@]}")
[ "$missing" = 0 ] || { log "fragment check failed"; exit 1; }

log "building vmlinux and bzImage with -j$(nproc) (about 5 min on 2 cores)"
make -s -C "$src" O="$obj" -j"$(nproc)" vmlinux bzImage >&2 2> >(grep -v -E '^\s*$' >&2)
tmp="$out.tmp"
rm -rf "$tmp"; mkdir -p "$tmp"
cp "$obj/vmlinux" "$tmp/vmlinux"
cp "$obj/arch/x86/boot/bzImage" "$tmp/bzImage"
cp "$obj/.config" "$tmp/config"
echo "$version" > "$tmp/source-version"
mv "$tmp" "$out"
log "built in $(( $(date +%s) - start )) s: $out"
echo "$out"
