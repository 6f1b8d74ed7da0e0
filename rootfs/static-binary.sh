# Sourced by the rootfs build scripts: builds one workspace binary as a static glibc executable.
#
#   static_binary PACKAGE BINARY   -> prints the path of the checked static binary
#
# crt-static with an explicit --target: only the binary is linked statically; build scripts and
# proc-macros stay dynamic host binaries. RUSTFLAGS is replaced, not extended
# (CARGO_ENCODED_RUSTFLAGS would take precedence). The caller defines die().
static_binary() {
    local package=$1 binary=$2
    local workspace target_dir target=x86_64-unknown-linux-gnu
    workspace=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    target_dir="$workspace/target/static"
    # Profile `guest` (workspace Cargo.toml): release, built for size.
    local path="$target_dir/$target/guest/$binary"
    echo "building static $binary in $target_dir" >&2
    (
        cd "$workspace"
        unset CARGO_ENCODED_RUSTFLAGS
        RUSTFLAGS="-C target-feature=+crt-static" \
            cargo build --profile guest -p "$package" --target "$target" --target-dir "$target_dir" >&2
    ) || die "cargo build of $package failed"
    local info
    info=$(file -b "$path")
    case "$info" in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) die "$path is not static: $info" ;;
    esac
    # ldd exits non-zero for static binaries; what matters is no library mapping.
    if ldd "$path" 2>&1 | grep -q '=>'; then
        die "$path links shared libraries: $(ldd "$path" 2>&1 | tr '\n' ' ')"
    fi
    echo "$path"
}
