#!/usr/bin/env bash
# Builds the Shoal images `shoal-coordinator:local` and `shoal-client:local`.
#
#   deploy/build-images.sh            # default: no registry needed (this project's machines)
#   deploy/build-images.sh --registry # multi-stage build (Rust builder -> slim runtime); needs to
#                                     # pull rust:1-slim-bookworm and debian:bookworm-slim
#
# Default path: the binaries are built here with cargo, then each image is made FROM scratch out
# of a root filesystem assembled from them: the two binaries, exactly the shared libraries `ldd`
# says they load (glibc, libm, libgcc_s and the loader), an /etc/passwd with the non-root user
# `shoal` (uid 10001), and /state owned by it. Nothing is pulled.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--registry" ]]; then
    docker build -f deploy/Dockerfile --target coordinator -t shoal-coordinator:local .
    docker build -f deploy/Dockerfile --target client -t shoal-client:local .
    exit 0
fi

# SHOAL_IMAGE_PROFILE=dev packs the debug build instead (CI: the tests built it already, and a
# release build from scratch would cost CI minutes for the same code; images for use are release).
profile="${SHOAL_IMAGE_PROFILE:-release}"
case "$profile" in
    release) out=release ;;
    dev) out=debug ;;
    *) echo "SHOAL_IMAGE_PROFILE must be release or dev, not '$profile'" >&2; exit 2 ;;
esac
cargo build --profile "$profile" --locked -p shoal-coordinator -p shoal-client
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp" "$ctx/state" "$ctx/pki"
cp "target/$out/shoal-coordinator" "target/$out/shoal-client" "$root/usr/local/bin/"
for bin in "target/$out/shoal-coordinator" "target/$out/shoal-client"; do
    # Lines look like `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or
    # `/lib64/ld-linux-x86-64.so.2 (0x...)`; vdso has no file.
    ldd "$bin" | grep -o '/[^ ]*' | while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
done
cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/nonexistent
shoal:x:10001:10001:shoal:/state:/nonexistent
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
shoal:x:10001:
GROUP
cp deploy/local/coordinator.Dockerfile deploy/local/client.Dockerfile "$ctx/"
docker build -f "$ctx/coordinator.Dockerfile" -t shoal-coordinator:local "$ctx"
docker build -f "$ctx/client.Dockerfile" -t shoal-client:local "$ctx"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep '^shoal-'
