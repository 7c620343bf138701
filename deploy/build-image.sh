#!/usr/bin/env bash
# Builds the Roster image from a roster binary, without pulling anything:
#   deploy/build-image.sh [BINARY] [TAG]
# BINARY defaults to target/release/roster (built if missing), TAG to
# roster:local. The image holds the binary, the shared libraries it needs
# (from `ldd`), /etc/passwd and /etc/group for the user it runs as (10001),
# /etc/nsswitch.conf (peer URLs may name hosts) and an empty /var/lib/roster.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:-target/release/roster}
tag=${2:-roster:local}
if [[ ! -x $binary ]]; then
    if [[ $binary == target/release/roster ]]; then
        cargo build --release -p roster-cli
    else
        echo "build-image.sh: $binary is not an executable" >&2
        exit 2
    fi
fi
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
root=$context/rootfs
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/var/lib/roster" "$root/tmp"
cp "$binary" "$root/usr/local/bin/roster"
# Every library the binary loads, at the path it is loaded from.
ldd "$binary" | awk '/=> \//{print $3} /^[ \t]*\//{print $1}' | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
printf 'root:x:0:0::/:/nonexistent\nroster:x:10001:10001::/var/lib/roster:/nonexistent\n' >"$root/etc/passwd"
printf 'root:x:0:\nroster:x:10001:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
touch "$root/var/lib/roster/.keep"
chmod 1777 "$root/tmp"
cp deploy/Dockerfile "$context/Dockerfile"
docker build --quiet -t "$tag" "$context" >/dev/null
echo "built $tag ($(du -sh "$root" | cut -f1) uncompressed)"
