#!/usr/bin/env bash
# Build the images this product needs, offline: no registry, only Debian packages and PyPI.
#
#   launcher-base:bookworm      debootstrap --variant=minbase + python3, tini (docker import)
#   launcher-notebook:latest    base + the Python stack in docker/notebook-requirements.txt
#   launcher-services-base:bookworm, launcher-app:latest (with --app): nginx, redis-server and this
#                               product's code and dependencies, for docker-compose.yml
#
# Each image carries a label with the hash of its inputs; an image whose inputs did not change
# is not rebuilt. Usage: scripts/build-images.sh [--force]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=$root/build
mkdir -p "$build"
force=
with_app=0
for arg in "$@"; do
  case $arg in
    --force) force=--force ;;
    --app) with_app=1 ;;
    *) echo "usage: $0 [--force] [--app]" >&2; exit 2 ;;
  esac
done
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
base_pkgs="python3,tini,ca-certificates,tzdata,passwd"
log() { printf '[build-images] %s\n' "$*" >&2; }

image_label() { docker image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

# debootstrap_image NAME PACKAGES: a Debian bookworm minbase rootfs imported as an image
debootstrap_image() {
  local name=$1 pkgs=$2 hash rootfs
  hash=$(printf '%s %s' "$pkgs" "bookworm" | sha256sum | cut -c1-16)
  if [[ "$force" == --force || "$(image_label "$name" launcher.inputs)" != "$hash" ]]; then
    rootfs=$build/rootfs-${name%%:*}
    if [[ ! -f $rootfs/.complete-$hash ]]; then
      log "debootstrap bookworm into $rootfs (about a minute)"
      rm -rf "$rootfs"
      debootstrap --variant=minbase --include="$pkgs" bookworm "$rootfs" "$mirror" >"$build/debootstrap-${name%%:*}.log"
      rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
      touch "$rootfs/.complete-$hash"
    fi
    log "importing $name"
    tar -C "$rootfs" --exclude="./.complete-*" -c . |
      docker import --change "LABEL launcher.inputs=$hash" --change 'CMD ["/bin/bash"]' - "$name" >/dev/null
  fi
}

# --- base -----------------------------------------------------------------------------------
debootstrap_image launcher-base:bookworm "$base_pkgs"
base_hash=$(image_label launcher-base:bookworm launcher.inputs)

# --- notebook -------------------------------------------------------------------------------
nb_hash=$(cat docker/notebook-requirements.txt docker/Dockerfile.notebook docker/notebook/nbl_identity.py | sha256sum | cut -c1-16)
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
  cp docker/notebook/nbl_identity.py "$ctx/"
  printf 'prefix/bin\nprefix/etc\n' >"$ctx/.dockerignore"
  log "building launcher-notebook:latest"
  DOCKER_BUILDKIT=0 docker build --quiet --label "launcher.inputs=$nb_hash" -t launcher-notebook:latest "$ctx" >/dev/null
fi

# --- app (for docker-compose.yml) ---------------------------------------------------------------
if ((with_app)); then
  debootstrap_image launcher-services-base:bookworm "$base_pkgs,nginx-light,redis-server"
  ctx=$build/app
  mkdir -p "$ctx"
  python3 - >"$ctx/requirements.txt" <<'PY'
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))
# redis-py needs async-timeout below Python 3.11.3: Debian's python3 in the image is 3.11.2, but pip
# evaluates that marker against the host's Python, which may be newer.
print("async-timeout>=4.0.3")
PY
  req_hash=$(sha256sum "$ctx/requirements.txt" | cut -c1-16)
  if [[ ! -f $ctx/prefix/.complete-$req_hash ]]; then
    log "installing the app's Python dependencies into $ctx/prefix"
    rm -rf "$ctx/prefix"
    python3 -m pip install --quiet --disable-pip-version-check --ignore-installed --no-warn-script-location \
      --prefix "$ctx/prefix" -r "$ctx/requirements.txt"
    touch "$ctx/prefix/.complete-$req_hash"
  fi
  rm -rf "$ctx/src" && mkdir -p "$ctx/src"
  # Tracked and new (not ignored) files as they are in the working tree; files deleted there are left out.
  git ls-files -z --cached --others --exclude-standard launcher workers ui celeryconfig.py docker/nginx notebooks \
    pyproject.toml | while IFS= read -r -d '' f; do if [[ -f $f ]]; then printf '%s\0' "$f"; fi; done |
    sort -zu | xargs -0 cp --parents -t "$ctx/src"
  cp docker/Dockerfile.app "$ctx/Dockerfile"
  printf 'prefix/bin\nprefix/etc\nrequirements.txt\n' >"$ctx/.dockerignore"
  app_hash=$( (cat docker/Dockerfile.app "$ctx/requirements.txt"; tar -C "$ctx/src" -c --sort=name --mtime=@0 .) | sha256sum | cut -c1-16)
  if [[ "$force" == --force || "$(image_label launcher-app:latest launcher.inputs)" != "$app_hash" ]]; then
    log "building launcher-app:latest"
    DOCKER_BUILDKIT=0 docker build --quiet --label "launcher.inputs=$app_hash" -t launcher-app:latest "$ctx" >/dev/null
  fi
fi
log "images ready: $(docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^launcher-' | tr '\n' ' ')"
