#!/usr/bin/env bash
# Builds the end-to-end test container image, offline.
#
#   rootfs/build-test-image.sh <out-dir>
#
# Output:
#   <out-dir>/rootfs   a rootfs directory: Debian's busybox-static as
#                      /bin/busybox with symlinks for the applets the tests
#                      use, /usr/bin/nutshell-probe (static, from
#                      test-programs/), /etc/passwd and /etc/group (root,
#                      nobody), empty /proc /sys /dev /tmp /run /etc mount points,
#                      Debian's /var/run -> /run and a symlink /up -> ../../..
#                      (mount targets must resolve inside the rootfs through
#                      both, see tests/tests/pod_containers.rs).
#   <out-dir>/oci      the same rootfs as an OCI image layout: oci-layout,
#                      index.json, blobs/sha256/{layer (tar+gzip), config,
#                      manifest}. Byte-for-byte reproducible from the same inputs.
#
# busybox comes from the host's busybox-static package (apt-get install
# busybox-static); nothing is downloaded. Progress goes to stderr; the last
# stdout line is <out-dir>.
set -euo pipefail

readonly BUSYBOX=${BUSYBOX:-/bin/busybox}
# Applets linked in /bin; busybox is never run on the host to install them.
readonly APPLETS=(sh ash cat echo ls ps sleep hostname httpd wget nc ipcs ipcrm
    id tty stty mount umount grep head tail wc true false kill env printf test
    mkdir rm cp mv touch dd seq sed awk tr uname readlink date sync df stat)

die() {
    echo "build-test-image.sh: $*" >&2
    exit 1
}

[[ $# -eq 1 ]] || die "usage: $0 <out-dir>"
for tool in cargo file tar gzip sha256sum; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
[[ -x $BUSYBOX ]] || die "$BUSYBOX not found: install Debian's busybox-static"
case "$(file -b -L "$BUSYBOX")" in
*"statically linked"* | *"static-pie linked"*) ;;
*) die "$BUSYBOX is not static (need busybox-static, not busybox)" ;;
esac

workspace=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1"
out_dir=$(cd "$1" && pwd)
# shellcheck source=rootfs/static-binary.sh
. "$workspace/rootfs/static-binary.sh"
probe=$(static_binary nutshell-test-programs nutshell-probe)

# --- rootfs directory ---------------------------------------------------------
rootfs="$out_dir/rootfs"
rm -rf "$rootfs"
mkdir -p "$rootfs"/{bin,usr/bin,etc,proc,sys,dev,run,tmp,root,var/www}
chmod 1777 "$rootfs/tmp"
install -m 0755 "$BUSYBOX" "$rootfs/bin/busybox"
for applet in "${APPLETS[@]}"; do
    ln -s busybox "$rootfs/bin/$applet"
done
install -m 0755 "$probe" "$rootfs/usr/bin/nutshell-probe"
if command -v strip >/dev/null; then
    strip --strip-all "$rootfs/usr/bin/nutshell-probe"
fi
printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' \
    'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$rootfs/etc/passwd"
printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$rootfs/etc/group"
echo 'nutshell test page' >"$rootfs/var/www/index.html"
ln -s /run "$rootfs/var/run"
ln -s ../../.. "$rootfs/up"
find "$rootfs" -exec touch -h -d @0 {} +

# --- OCI image layout -----------------------------------------------------------
oci="$out_dir/oci"
rm -rf "$oci"
blobs="$oci/blobs/sha256"
mkdir -p "$blobs"
staging=$(mktemp -d "${TMPDIR:-/tmp}/nutshell-test-image.XXXXXX")
trap 'rm -rf "$staging"' EXIT

tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$rootfs" -cf "$staging/layer.tar" .
diff_id=$(sha256sum "$staging/layer.tar" | cut -d' ' -f1)
gzip -n -9 -c "$staging/layer.tar" >"$staging/layer.tar.gz"

# Moves a file into blobs/sha256 under its digest; prints "digest size".
add_blob() {
    local digest size
    digest=$(sha256sum "$1" | cut -d' ' -f1)
    size=$(stat -c %s "$1")
    mv "$1" "$blobs/$digest"
    echo "$digest $size"
}

read -r layer_digest layer_size < <(add_blob "$staging/layer.tar.gz")
printf '%s' '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:'"$diff_id"'"]},"history":[{"created_by":"rootfs/build-test-image.sh"}]}' \
    >"$staging/config.json"
read -r config_digest config_size < <(add_blob "$staging/config.json")
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'"$config_digest"'","size":'"$config_size"'},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:'"$layer_digest"'","size":'"$layer_size"'}]}' \
    >"$staging/manifest.json"
read -r manifest_digest manifest_size < <(add_blob "$staging/manifest.json")
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:'"$manifest_digest"'","size":'"$manifest_size"',"annotations":{"org.opencontainers.image.ref.name":"nutshell/busybox:test"}}]}' \
    >"$oci/index.json"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$oci/oci-layout"

echo "rootfs: $(du -sk "$rootfs" | cut -f1) KiB; layer sha256:$layer_digest ($layer_size bytes)" >&2
echo "$out_dir"
