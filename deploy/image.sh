#!/usr/bin/env bash
# `make image`: the service image (deploy/Dockerfile) with whatever builder this machine has, tagged with korasr's
# version and the git commit; the last line printed is the tag and the image's size, nothing else.
#   deploy/image.sh [--local-base] [--export DIR] [--name NAME]
# --local-base: no image registry can be reached, so the base is built from Debian's mirror first (deploy/base.sh).
# --export DIR: an export folder inside the repository to bake in at /model (default: none, mounted at run time).
# The pins: those of the venv `make setup` made (.venv), so the image runs the versions the tests ran with.
# podman and buildah read deploy/podman/{containers,storage}.conf (the settings a machine like this one needs; set
# CONTAINERS_CONF and CONTAINERS_STORAGE_CONF yourself to use others); docker reads its own.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)

LOCAL_BASE= EXPORT= NAME=localhost/korasr
while (($#)); do
  case $1 in
    --local-base) LOCAL_BASE=1 ;;
    --export) EXPORT=$2; shift ;;
    --name) NAME=$2; shift ;;
    *) echo "image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}
export CONTAINERS_STORAGE_CONF=${CONTAINERS_STORAGE_CONF:-$PWD/deploy/podman/storage.conf}

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then BUILDER=docker
elif command -v podman >/dev/null; then BUILDER=podman
elif command -v buildah >/dev/null; then BUILDER=buildah
else
  echo "make image: no image builder here (docker, podman or buildah); on Debian: apt-get install podman buildah runc" >&2
  exit 2
fi
note() { echo "make image: $*" >&2; }

if [ -n "$EXPORT" ]; then
  real=$(cd "$EXPORT" 2>/dev/null && pwd -P) || { echo "make image: EXPORT=$EXPORT is not a folder" >&2; exit 2; }
  case $real/ in "$ROOT"/*) ;; *) echo "make image: EXPORT=$EXPORT is outside the repository (the build context)" >&2; exit 2 ;; esac
  [ -f "$real/model.onnx" ] || { echo "make image: EXPORT=$EXPORT has no model.onnx (not a korasr export folder)" >&2; exit 2; }
  EXPORT=${real#"$ROOT"/}
fi

BASE_ARGS=()
if [ -n "$LOCAL_BASE" ]; then
  [ "$BUILDER" != buildah ] || { echo "make image LOCAL_BASE=1 imports the base with podman or docker" >&2; exit 2; }
  BASE=$(deploy/base.sh "$BUILDER")
  BASE_ARGS=(--build-arg "BASE=$BASE")
fi

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
REVISION=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ "$REVISION" != unknown ] && [ -n "$(git status --porcelain -- korasr deploy pyproject.toml 2>/dev/null)" ]; then
  REVISION=$REVISION-dirty  # the image holds changes no commit has
fi
TAG=$NAME:$VERSION-$REVISION

mkdir -p deploy/.build
if [ -x .venv/bin/pip ]; then
  .venv/bin/pip freeze --exclude-editable | grep -E '^[A-Za-z0-9._-]+==' > deploy/.build/constraints.txt
else
  note "no .venv (make setup): pip resolves the newest versions within pyproject.toml's ranges"
  cp deploy/docker/no-constraints.txt deploy/.build/constraints.txt
fi

args=(-f deploy/Dockerfile -t "$TAG" -t "$NAME:$VERSION"
      --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION"
      --build-arg CONSTRAINTS=deploy/.build/constraints.txt ${BASE_ARGS[@]+"${BASE_ARGS[@]}"})
[ -z "$EXPORT" ] || args+=(--build-arg "EXPORT=$EXPORT")
note "building $TAG with $BUILDER"
case $BUILDER in
  # docker reads deploy/Dockerfile.dockerignore beside the Dockerfile by itself
  docker) docker build "${args[@]}" . >&2 ;;
  # --format docker: the OCI format has no HEALTHCHECK; host networking: no iptables are touched
  podman) podman build --network host --format docker --ignorefile deploy/Dockerfile.dockerignore "${args[@]}" . >&2 ;;
  buildah) buildah bud --isolation chroot --network host --format docker --ignorefile deploy/Dockerfile.dockerignore \
             "${args[@]}" . >&2 ;;
esac
# Earlier builds whose tags moved to this one, and their build stages, are of no use to anyone (no tag names them):
# removed, unless a container uses them. vfs storage (podman here) holds every layer whole, so they add up fast.
if [ "$BUILDER" != buildah ]; then
  for title in korasr korasr-build; do
    "$BUILDER" image prune --force --filter "label=org.opencontainers.image.title=$title" >/dev/null 2>&1 || true
  done
fi
if [ "$BUILDER" = buildah ]; then
  size=$(buildah images --format '{{.Size}}' "$TAG")
else
  size=$("$BUILDER" image inspect --format '{{.Size}}' "$TAG" | awk '{ printf "%.0f MB", $1 / 1e6 }')
fi
echo "$TAG $size"
