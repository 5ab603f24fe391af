#!/usr/bin/env bash
# Builds the aether binary for deployment: statically linked against glibc, so the one
# file runs on Ubuntu 22.04, Ubuntu 24.04 and Debian 12 (and in any container base)
# whatever their C library. Writes it, stripped, to target/deploy/aether and prints that
# path.
#
# Why not musl: no musl Rust target can be installed here. A glibc static build works:
# since glibc 2.34 the "files" and "dns" name services are part of libc itself, so the
# binary resolves localhost, /etc/hosts names and DNS names (container names too) with
# no shared library; NSS modules an /etc/nsswitch.conf may name beyond those (mdns,
# resolve) are skipped when they cannot be loaded. See docs/deploy.md.
#
# It builds with --target, so it has its own output directory under the target dir
# (target/x86_64-unknown-linux-gnu/release) and leaves normal `cargo build` output
# alone; RUSTFLAGS given this way do not reach build scripts and proc macros.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
AETHER_LOG_TAG=build-static

TRIPLE=x86_64-unknown-linux-gnu
OUT_DIR=$AETHER_REPO_ROOT/target/deploy
target_dir=${CARGO_TARGET_DIR:-$AETHER_REPO_ROOT/target}

cd "$AETHER_REPO_ROOT"
say "cargo build --release --target $TRIPLE (crt-static)"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --target "$TRIPLE" --bin aether >&2

built=$target_dir/$TRIPLE/release/aether
# A static binary has no program interpreter and no NEEDED libraries.
if readelf -lW "$built" | grep -q 'Requesting program interpreter' ||
    readelf -dW "$built" | grep -q '(NEEDED)'; then
    readelf -dW "$built" | grep NEEDED >&2 || true
    die "$built is dynamically linked"
fi

mkdir -p "$OUT_DIR"
tmp=$(mktemp "$OUT_DIR/.aether.XXXXXX")
trap 'rm -f "$tmp"' EXIT
# Line tables are kept in the cargo output for debugging; the deployed copy is stripped.
objcopy --strip-debug --strip-unneeded "$built" "$tmp"
chmod 0755 "$tmp"
"$tmp" --help >/dev/null || die "the stripped binary does not run"
if cmp -s "$tmp" "$OUT_DIR/aether"; then
    rm -f "$tmp"
else
    mv -f "$tmp" "$OUT_DIR/aether"
fi
say "$(du -h "$OUT_DIR/aether" | cut -f1) static binary: $OUT_DIR/aether"
echo "$OUT_DIR/aether"
