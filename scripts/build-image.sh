#!/usr/bin/env bash
# Builds the sdserve container image FROM scratch: the stripped binary, the
# shared libraries `ldd` says it loads (glibc's four for the CPU build), CA
# certificates, passwd/group naming the non-root user 10001, empty writable
# /data and /tmp, and nothing else (no shell, no package manager, no curl; the
# health check is `sdserve healthcheck`). See deploy/image/Dockerfile{,.cuda}.
#
#   scripts/build-image.sh                                  # target/release/sdserve -> sdserve:cpu
#   scripts/build-image.sh --profile dev --tag sdserve:test # the binary `cargo test` built (target/debug)
#   scripts/build-image.sh --binary path/to/sdserve --tag registry/sdserve:0.1.0
#   scripts/build-image.sh --variant cuda --binary ~/.cache/sdserve-cuda/target/release/sdserve \
#       --cuda-lib-dir <venv>/lib/python3*/site-packages/nvidia/cu13/lib --tag sdserve:cuda
#   scripts/build-image.sh --context-only DIR               # write the build context, no docker
#
# Release builds (`cargo build --release`) are what users ship; CI packages the
# binary its test build already made (--profile dev: our crates at opt-level 1,
# every dependency, candle included, at 3) to avoid a second 20-minute build.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release binary= tag= variant=cpu cuda_lib_dir= context_only=
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=${2:?}; shift 2 ;;
    --binary) binary=${2:?}; shift 2 ;;
    --tag) tag=${2:?}; shift 2 ;;
    --variant) variant=${2:?}; shift 2 ;;
    --cuda-lib-dir) cuda_lib_dir=${2:?}; shift 2 ;;
    --context-only) context_only=${2:?}; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done

case "$variant" in
  cpu) dockerfile=deploy/image/Dockerfile ;;
  cuda) dockerfile=deploy/image/Dockerfile.cuda
        [ -d "$cuda_lib_dir" ] || { echo "--variant cuda needs --cuda-lib-dir (the wheels' nvidia/cu13/lib)" >&2; exit 2; }
        cuda_lib_dir=$(cd "$cuda_lib_dir" && pwd -P) ;;
  *) echo "--variant is cpu or cuda, not $variant" >&2; exit 2 ;;
esac
tag=${tag:-sdserve:$variant}
if [ -z "$binary" ]; then
  case "$profile" in dev|test) dir=debug ;; *) dir=$profile ;; esac
  binary=target/$dir/sdserve
fi
[ -x "$binary" ] || { echo "no binary at $binary: cargo build --profile $profile -p sdserve (or pass --binary)" >&2; exit 1; }
certs=/etc/ssl/certs/ca-certificates.crt
[ -f "$certs" ] || { echo "no $certs: apt-get install -y ca-certificates" >&2; exit 1; }

if [ -n "$context_only" ]; then ctx=$context_only; mkdir -p "$ctx"; else ctx=$(mktemp -d); trap 'rm -rf "$ctx"' EXIT; fi
root=$ctx/rootfs
rm -rf "$root" "$ctx/data"
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp" "$ctx/data/outputs" "$ctx/data/huggingface" "$ctx/data/models"
chmod 1777 "$root/tmp"   # a standard /tmp, whichever user the container runs as

# The binary without debug information (the dev build carries ~400 MB of it).
cp "$binary" "$root/usr/local/bin/sdserve"
strip --strip-unneeded "$root/usr/local/bin/sdserve"

# Shared libraries, at the paths the loader looks in. CUDA ones (found through
# --cuda-lib-dir) go to /usr/local/cuda/lib64 (the image's LD_LIBRARY_PATH);
# libcuda.so.1 belongs to the host's driver and is mounted at run time, never shipped.
libs=$(LD_LIBRARY_PATH=${cuda_lib_dir:-} ldd "$root/usr/local/bin/sdserve")
if grep -q "not found" <<<"$libs"; then
  if [ "$variant" = cuda ] && [ "$(grep "not found" <<<"$libs" | grep -vc 'libcuda\.so\.1')" = 0 ]; then
    :  # only the driver's libcuda is missing here: expected
  else
    echo "ldd cannot resolve:" >&2; grep "not found" <<<"$libs" >&2; exit 1
  fi
fi
while read -r path; do
  case "$path" in */libcuda.so*) continue ;; esac
  if [ -n "$cuda_lib_dir" ] && [ "${path#"$cuda_lib_dir"/}" != "$path" ]; then
    mkdir -p "$root/usr/local/cuda/lib64"
    cp -L "$path" "$root/usr/local/cuda/lib64/$(basename "$path")"
  else
    mkdir -p "$root$(dirname "$path")"
    cp -L "$path" "$root$path"
  fi
done < <(awk '/=> \// {print $3} /^\t\// {print $1}' <<<"$libs")
# The loader itself is named by its absolute path (/lib64/ld-linux-x86-64.so.2,
# a symlink on Debian): copied above with -L as a file at that path.

cp "$certs" "$root$certs"
printf 'sdserve:x:10001:10001:sdserve:/data:/sbin/nologin\n' > "$root/etc/passwd"
printf 'sdserve:x:10001:\n' > "$root/etc/group"
cp "$dockerfile" "$ctx/Dockerfile"

if [ -n "$context_only" ]; then
  echo "context written to $ctx"
  exit 0
fi
# A CUDA binary cannot start here without the driver's libcuda.so.1: then the
# version is the checkout's (the binary is built from it).
version=$("$binary" --version 2>/dev/null | awk '{print $2}') ||
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
docker build --quiet -t "$tag" \
  --label org.opencontainers.image.title=sdserve \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$revision" \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  "$ctx" >/dev/null
size=$(docker image inspect --format '{{.Size}}' "$tag")
echo "built $tag ($variant, $(( size / 1000000 )) MB, from $binary)"
