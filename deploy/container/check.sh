#!/usr/bin/env bash
# Builds deploy/container/Containerfile here, where nothing can be pulled, and checks the image:
# the binaries are built on this machine (statically linked against glibc: the musl target the
# Containerfile's own build stage uses cannot be installed offline) and handed in as the
# `BINARIES` image, so the build stage is skipped, not pulled; the final stage is the shipped one.
# Then: the image runs as 65532:65532 with no entrypoint, holds nothing but the two binaries, and
# both run in its otherwise empty root filesystem as that user.
# Run by .ci/run; needs root (buildah's storage, chroot). Usage: bash deploy/container/check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

target=target/static
echo "==> container: static binaries ($target)"
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=$target \
  cargo build -q --target x86_64-unknown-linux-gnu -p ferry-replicator -p ferry-agent --bins
bin=$target/x86_64-unknown-linux-gnu/debug

tag=$$
binaries=localhost/ferry-binaries:check-$tag
image=localhost/ferry:check-$tag
work=$(mktemp -d)
ctr=""
cleanup() {
  [ -z "$ctr" ] || { buildah umount "$ctr" >/dev/null 2>&1 || true; buildah rm "$ctr" >/dev/null 2>&1 || true; }
  buildah rmi -f "$image" "$binaries" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "==> container: the BINARIES image"
b=$(buildah from scratch)
buildah copy -q "$b" "$bin/ferry" "$bin/ferry-agent" /out/usr/local/bin/ >/dev/null
buildah commit -q "$b" "$binaries" >/dev/null
buildah rm "$b" >/dev/null

echo "==> container: buildah bud -f deploy/container/Containerfile"
buildah bud -q --pull-never --build-arg BINARIES="$binaries" \
  -f deploy/container/Containerfile -t "$image" . >/dev/null

fail() { echo "container check: $*" >&2; exit 1; }
user=$(buildah inspect --format '{{.OCIv1.Config.User}}' "$image")
[ "$user" = "65532:65532" ] || fail "image user is '$user', want 65532:65532"
entry=$(buildah inspect --format '{{.OCIv1.Config.Entrypoint}}' "$image")
[ "$entry" = "[]" ] || fail "image has an entrypoint: $entry"

ctr=$(buildah from --pull-never "$image")
root=$(buildah mount "$ctr")
files=$(cd "$root" && find . -type f | sort | tr '\n' ' ')
[ "$files" = "./usr/local/bin/ferry ./usr/local/bin/ferry-agent " ] || fail "image holds: $files"
# No libc, no loader, no /etc in the image: the binaries must run as they are, as the image's user.
mkdir -p "$root/work" && cp policies/push-eu-to-us.json "$root/work/" && chmod -R a+rX "$root/work"
for cmd in "/usr/local/bin/ferry --version" "/usr/local/bin/ferry-agent --version" \
  "/usr/local/bin/ferry policy validate /work/push-eu-to-us.json"; do
  out=$(chroot --userspec=65532:65532 "$root" $cmd 2>&1) || fail "'$cmd' in the image: $out"
  echo "    $cmd: $out"
done
echo "==> container: ok ($(du -sh "$root/usr/local/bin" | cut -f1) of binaries; the Containerfile's own musl release build is smaller)"
