#!/usr/bin/env bash
# Build the images this product needs, offline: no registry, only Debian packages and PyPI.
#
#   launcher-base:bookworm      debootstrap --variant=minbase + python3, tini (docker import)
#   launcher-notebook:latest    base + the Python stack in docker/notebook-requirements.txt
#
# Each image carries a label with the hash of its inputs; an image whose inputs did not change
# is not rebuilt. Usage: scripts/build-images.sh [--force]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=$root/build
mkdir -p "$build"
force=${1:-}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
base_pkgs="python3,tini,ca-certificates,tzdata,passwd"
log() { printf '[build-images] %s\n' "$*" >&2; }

image_label() { docker image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

# --- base -----------------------------------------------------------------------------------
base_hash=$(printf '%s %s' "$base_pkgs" "bookworm" | sha256sum | cut -c1-16)
if [[ "$force" == --force || "$(image_label launcher-base:bookworm launcher.inputs)" != "$base_hash" ]]; then
  rootfs=$build/rootfs
  if [[ ! -f $rootfs/.complete-$base_hash ]]; then
    log "debootstrap bookworm into $rootfs (about a minute)"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include="$base_pkgs" bookworm "$rootfs" "$mirror" >"$build/debootstrap.log"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    touch "$rootfs/.complete-$base_hash"
  fi
  log "importing launcher-base:bookworm"
  tar -C "$rootfs" --exclude="./.complete-*" -c . |
    docker import --change "LABEL launcher.inputs=$base_hash" --change 'CMD ["/bin/bash"]' - launcher-base:bookworm >/dev/null
fi

# --- notebook -------------------------------------------------------------------------------
nb_hash=$(cat docker/notebook-requirements.txt docker/Dockerfile.notebook | sha256sum | cut -c1-16)
nb_hash=$nb_hash-$base_hash
if [[ "$force" == --force || "$(image_label launcher-notebook:latest launcher.inputs)" != "$nb_hash" ]]; then
  ctx=$build/notebook
  req_hash=$(sha256sum docker/notebook-requirements.txt | cut -c1-16)
  if [[ ! -f $ctx/prefix/.complete-$req_hash ]]; then
    log "installing the notebook's Python stack into $ctx/prefix (a few minutes on first run)"
    rm -rf "$ctx/prefix"
    mkdir -p "$ctx"
    python3 -m pip install --quiet --disable-pip-version-check --ignore-installed --no-warn-script-location \
      --prefix "$ctx/prefix" -r docker/notebook-requirements.txt
    touch "$ctx/prefix/.complete-$req_hash"
  fi
  cp docker/Dockerfile.notebook "$ctx/Dockerfile"
  printf 'prefix/bin\nprefix/etc\n' >"$ctx/.dockerignore"
  log "building launcher-notebook:latest"
  DOCKER_BUILDKIT=0 docker build --quiet --label "launcher.inputs=$nb_hash" -t launcher-notebook:latest "$ctx" >/dev/null
fi
log "images ready: $(docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^launcher-' | tr '\n' ' ')"
