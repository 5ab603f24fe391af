#!/usr/bin/env bash
# Builds the Debian package of AetherStore, target/deploy/aetherstore_VERSION_amd64.deb,
# around the static binary deploy/build-static.sh makes (so the one package installs on
# Ubuntu 22.04, Ubuntu 24.04 and Debian 12). Prints the package's path.
#
#   deploy/build-deb.sh                        # build the static binary, then the package
#   deploy/build-deb.sh --binary PATH          # package that (static) binary instead
#   deploy/build-deb.sh --version 0.1.0+fix1   # another version (default: Cargo.toml's)
#   deploy/build-deb.sh --out DIR              # write it there (default: target/deploy)
#
# DIR/aetherstore.deb is a link to the package last built there.
#
# What it holds (docs/deploy.md):
#   /usr/bin/aether
#   /lib/systemd/system/aether-master.service, aether-datanode.service, aether-s3.service
#     (hardened, not enabled or started on install; restarted on upgrade when running)
#   /etc/aether/master.env, datanode.env, s3.env (conffiles: an upgrade keeps local changes)
#   shell completions for bash, zsh and fish
# and its postinst creates the aether system user and /var/lib/aether/{master,datanode,s3}.
# The files of deploy/deb/ are the package's own; another service is one more unit,
# settings file and entry in ROLES below and in the maintainer scripts.
#
# Why dpkg-deb from a staged tree rather than cargo-deb: cargo-deb would have to be
# compiled first (a crate and its dependencies, minutes of CPU on a shared build
# machine) only to lay out the same files; dpkg-deb is already on every Debian-like
# machine and packages the binary build-static.sh checked, not another build.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
AETHER_LOG_TAG=build-deb

ROLES=(master datanode s3)
binary=
version=
out_dir=$AETHER_REPO_ROOT/target/deploy
while (($#)); do
    case $1 in
        --binary) binary=$2; shift 2 ;;
        --version) version=$2; shift 2 ;;
        --out) out_dir=$2; shift 2 ;;
        *) die "unknown argument $1 (see the top of $0)" ;;
    esac
done

started=$SECONDS
if [[ -z $binary ]]; then
    binary=$("$AETHER_REPO_ROOT/deploy/build-static.sh")
fi
[[ -x $binary ]] || die "$binary is not an executable"
if readelf -dW "$binary" | grep -q '(NEEDED)'; then
    die "$binary is dynamically linked; the package needs the static build of deploy/build-static.sh"
fi
if [[ -z $version ]]; then
    version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$AETHER_REPO_ROOT/Cargo.toml" | head -n 1)
fi
[[ $version =~ ^[0-9][A-Za-z0-9.+~-]*$ ]] || die "$version is not a Debian version"

src=$AETHER_REPO_ROOT/deploy/deb
stage=$(mktemp -d "${TMPDIR:-/tmp}/aether-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root=$stage/root

install -D -m 0755 "$binary" "$root/usr/bin/aether"
for role in "${ROLES[@]}"; do
    install -D -m 0644 "$src/aether-$role.service" "$root/lib/systemd/system/aether-$role.service"
    install -D -m 0640 "$src/$role.env" "$root/etc/aether/$role.env"
done
install -D -m 0644 "$src/copyright" "$root/usr/share/doc/aetherstore/copyright"
# Where each shell's completion package looks (bash-completion loads ours on first use).
completions=(bash:usr/share/bash-completion/completions/aether zsh:usr/share/zsh/vendor-completions/_aether
    fish:usr/share/fish/vendor_completions.d/aether.fish)
for entry in "${completions[@]}"; do
    mkdir -p "$(dirname "$root/${entry#*:}")"
    "$binary" completions "${entry%%:*}" >"$root/${entry#*:}"
    chmod 0644 "$root/${entry#*:}"
done

mkdir -m 0755 "$root/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "$src/$script" "$root/DEBIAN/$script"
done
for role in "${ROLES[@]}"; do echo "/etc/aether/$role.env"; done >"$root/DEBIAN/conffiles"
(cd "$root" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' |
    sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
cat >"$root/DEBIAN/control" <<EOF
Package: aetherstore
Version: $version
Architecture: amd64
Maintainer: AetherStore <maintainers@aetherstore.invalid>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: passwd
Section: net
Priority: optional
Homepage: https://github.com/deepesh611/AetherStore
Description: distributed, S3-style object store
 AetherStore keeps immutable objects on datanodes, each written durably to local disk
 and replicated along a chain of nodes; a master keeps the metadata in SQLite and
 repairs lost copies. One static binary, aether, runs either service (systemd units
 aether-master and aether-datanode, settings in /etc/aether) and is the client.
EOF
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

mkdir -p "$out_dir"
deb=$out_dir/aetherstore_${version}_amd64.deb
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
# The latest package under a name that does not change with the version, for the Ansible
# roles' default aether_common_deb_src.
ln -sfn "$(basename "$deb")" "$out_dir/aetherstore.deb"
say "$(du -h "$deb" | cut -f1) package in $((SECONDS - started))s: $deb"
echo "$deb"
