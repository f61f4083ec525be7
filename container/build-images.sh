#!/usr/bin/env bash
# Build Moorage's images offline, on whatever engine DOCKER_HOST names:
#   base     Debian bookworm minbase + python3, made with debootstrap and
#            `docker import` (no image registry is needed or reachable)
#   sandbox  moorage-sandbox:<version>: the runner, claude-agent-sdk with its
#            bundled CLI, the toolbox (container/toolbox.txt: the data stack
#            local sandboxes get from `make toolbox` too)
#   service  moorage-service:<version>: the service and the session store
# Python packages come from a wheelhouse built on the host with the venv's pip
# and constraints.txt; the image build itself runs with --network none.
#
# Usage: container/build-images.sh [sandbox|service|all]   (default: sandbox)
# Idempotent: each image is tagged by a hash of its inputs
# (<name>:<version>-<hash>) and built only when that tag is missing; the
# plain <name>:<version> tag is then pointed at it. Prints the tags it made.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${MOORAGE_IMAGE_CACHE:-/var/cache/moorage-images}
PY=${MOORAGE_BUILD_PYTHON:-$ROOT/.venv/bin/python}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
# git, curl, jq, ripgrep: CLI tools the agent reaches for (the host has them for local sandboxes: Makefile)
BASE_PACKAGES=python3,python3-venv,ca-certificates,procps,tini,file,unzip,git,curl,jq,ripgrep
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' service/pyproject.toml)
export DOCKER_BUILDKIT=0 # the classic builder: no buildx plugin on Debian's docker.io
mkdir -p "$CACHE"

say() { echo "build-images: $*" >&2; }
digest() { sha256sum | cut -c1-12; }
have() { docker image inspect "$1" >/dev/null 2>&1; }
# stale_tags NAME KEEP: NAME's tags other than KEEP with KEEP's prefix (older builds).
stale_tags() {
  docker image ls "$1" --format '{{.Tag}}' | { grep "^${2%-*}-" || true; } | { grep -vx "$2" || true; } | sed "s|^|$1:|"
}

base_image() {
  local tag rootfs
  tag="moorage-base:$SUITE-$({ echo "$SUITE $BASE_PACKAGES"; declare -f base_image; } | digest)"
  if ! have "$tag"; then
    command -v debootstrap >/dev/null || { say "debootstrap is missing (apt-get install debootstrap)"; exit 1; }
    rootfs="$CACHE/rootfs-$SUITE.tmp"
    rm -rf "$rootfs"
    say "debootstrap $SUITE -> $tag (takes a minute or two)"
    if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1; then
      tail -20 "$CACHE/debootstrap.log" >&2
      exit 1
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
    tar -C "$rootfs" --numeric-owner -c . | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$tag" >/dev/null
    rm -rf "$rootfs"
  fi
  stale_tags moorage-base "${tag#*:}" | while read -r old; do docker rmi "$old" >/dev/null || true; done
  echo "$tag"
}

# wheelhouse NAME PIP-WHEEL-ARGS...: a directory of wheels, cached by its inputs.
wheelhouse() {
  local name=$1 dir key
  shift
  # the key covers the arguments, the pins and any local project given as a path (its code, its
  # build files and the console's assets)
  key=$({ echo "$*"; cat constraints.txt container/toolbox.txt; for a in "$@"; do
    if [ -d "$a" ]; then
      find "$a" \( -name '*.py' -o -name '*.toml' -o -name '*.ini' -o -name '*.mako' -o -path '*/web/*' \) -not -path '*/build/*' | sort | xargs cat
    fi
  done; } | digest)
  dir="$CACHE/wheels-$name-$key"
  if [ ! -f "$dir/.complete" ]; then
    rm -rf "$dir"
    say "pip wheel ($name) -> $dir"
    (cd "${WHEEL_SOURCES:-$ROOT}" && "$PY" -m pip wheel -q --disable-pip-version-check -c "$ROOT/constraints.txt" -w "$dir" "$@") >&2
    touch "$dir/.complete"
  fi
  find "$CACHE" -maxdepth 1 -name "wheels-$name-*" ! -path "$dir" -exec rm -rf {} + # older pins
  echo "$dir"
}

# image NAME DOCKERFILE WHEELHOUSE BASE [SOURCE-DIR...]: build NAME:VERSION-<hash> once, tag NAME:VERSION.
image() {
  local name=$1 dockerfile=$2 wheels=$3 base=$4 key ctx tag build_tag
  shift 4
  key=$({ echo "$base $(basename "$wheels")"; cat "$dockerfile"; [ $# -eq 0 ] || find "$@" -name '*.py' | sort | xargs cat; } | digest)
  tag="$name:$VERSION-$key"
  if ! have "$tag"; then
    ctx="$CACHE/context-$name"
    rm -rf "$ctx"
    mkdir -p "$ctx/src"
    cp -al "$wheels" "$ctx/wheels" 2>/dev/null || cp -a "$wheels" "$ctx/wheels"
    rm -f "$ctx/wheels/.complete"
    for src in "$@"; do
      cp -a "$src" "$ctx/src/"
    done
    find "$ctx/src" -name __pycache__ -prune -exec rm -rf {} +
    cp "$dockerfile" "$ctx/Dockerfile"
    say "docker build $tag"
    # The build stage (wheels installed into a venv) is tagged too, so it is
    # not a dangling image: it stays as the cache while only sources change,
    # and goes with the next change of pins.
    build_tag="$name-build:$VERSION-$({ echo "$base $(basename "$wheels")"; cat "$dockerfile"; } | digest)"
    docker build -q --network none --build-arg "BASE_IMAGE=$base" --target build -t "$build_tag" "$ctx" >/dev/null
    docker build -q --network none --build-arg "BASE_IMAGE=$base" -t "$tag" "$ctx" >/dev/null
    rm -rf "$ctx"
    stale_tags "$name-build" "${build_tag#*:}" | while read -r old; do docker rmi "$old" >/dev/null || true; done
  fi
  docker tag "$tag" "$name:$VERSION"
  # Older builds of this version go (their shared layers stay with the new one).
  stale_tags "$name" "$VERSION-$key" | while read -r old; do docker rmi "$old" >/dev/null || true; done
  echo "$name:$VERSION $tag"
}

sandbox() {
  local base wheels
  base=$(base_image)
  wheels=$(wheelhouse sandbox "claude-agent-sdk" -r container/toolbox.txt)
  image moorage-sandbox container/Dockerfile "$wheels" "$base" container/moorage_runner
}

service() {
  local base wheels src="$CACHE/src-service"
  base=$(base_image)
  # Build our own projects from a clean copy: a stale build/ dir must not leak into a wheel.
  rm -rf "$src" && mkdir -p "$src"
  tar -c --exclude=build --exclude='*.egg-info' --exclude=__pycache__ session-store service | tar -x -C "$src"
  wheels=$(WHEEL_SOURCES=$src wheelhouse service ./session-store ./service)
  image moorage-service service/Dockerfile "$wheels" "$base"
}

docker version --format '{{.Server.Version}}' >/dev/null || { say "no Docker engine at ${DOCKER_HOST:-the default socket}"; exit 1; }
case "${1:-sandbox}" in
  sandbox) sandbox ;;
  service) service ;;
  all) sandbox && service ;;
  *) say "usage: $0 [sandbox|service|all]"; exit 2 ;;
esac
