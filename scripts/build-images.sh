#!/usr/bin/env bash
# Build the images this product needs, offline: no registry, only Debian packages and PyPI.
#
#   launcher-base:bookworm      debootstrap --variant=minbase + python3, tini (docker import)
#   launcher-notebook:<inputs>  base + the Python stack locked in docker/notebook-requirements.lock, tagged by
#   launcher-notebook:latest    the first 12 hex of the sha256 of its inputs, and as :latest (scripts/prune-images.sh
#                               removes old ones)
#   launcher-services-base:bookworm, launcher-app:latest (with --app): nginx, redis-server and this
#                               product's code and dependencies, for docker-compose.yml
#
# Each image carries a label (the notebook image: a tag) with the hash of its inputs; an image whose inputs did
# not change is not rebuilt. Usage: scripts/build-images.sh [--force] [--app]
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
# The Python stack is docker/notebook-requirements.lock (scripts/lock-notebook.sh), installed exactly: hashes
# required, no dependency resolution, into a prefix of its own, isolated from the host's packages and pip settings.
# The image is tagged by the hash of its inputs (the lockfile, the Dockerfile, the files it copies, the base) and
# as :latest; an image whose input tag exists already is not rebuilt, only :latest is pointed at it.
lock=docker/notebook-requirements.lock
req_digest=$(sed -e 's/#.*//' -e 's/[[:space:]]*$//' docker/notebook-requirements.txt | grep -v '^$' | sha256sum | cut -c1-16)
if ! grep -qx "# requirements digest: $req_digest" "$lock"; then
  echo "[build-images] $lock is older than docker/notebook-requirements.txt: run scripts/lock-notebook.sh" >&2
  exit 1
fi
lock_sha=$(sha256sum "$lock" | cut -d' ' -f1)
nb_files=("$lock" docker/Dockerfile.notebook docker/notebook/nbl_identity.py docker/notebook/nbl_pool_env.py
  docker/notebook/nbl_pool_env.pth docker/notebook/nbl_report.py docker/notebook/nbl_lean_server.py
  docker/notebook/nbl_lean_server.pth docker/notebook/profile.d/nbl_identity.sh)
mapfile -t lab_files < <(find docker/notebook/lab -type f | LC_ALL=C sort)
nb_files+=("${lab_files[@]}")
inputs_sha=$( (printf 'base %s\n' "$base_hash"; sha256sum "${nb_files[@]}") | sha256sum | cut -d' ' -f1)
nb_tag=launcher-notebook:${inputs_sha:0:12}
if [[ "$force" != --force ]] && docker image inspect "$nb_tag" >/dev/null 2>&1; then
  log "$nb_tag is up to date (inputs unchanged): not rebuilt"
else
  ctx=$build/notebook
  if [[ ! -f $ctx/prefix/.complete-${lock_sha:0:16} ]]; then
    # The prefix's layout (lib/python3.11) and its compiled wheels must match the image's python3 (3.11).
    python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
      { echo "[build-images] the host's python3 must be 3.11, like the image's" >&2; exit 1; }
    log "installing $lock into $ctx/prefix (a few minutes on first run)"
    rm -rf "$ctx/prefix"
    mkdir -p "$ctx"
    # --isolated: no PIP_* variables or user pip.conf; PYTHONNOUSERSITE: no ~/.local packages; --ignore-installed
    # with --prefix: the host's site-packages are neither reused nor consulted (so no resolver warnings about the
    # host's own pins); --no-deps: the lockfile is the whole list.
    env -u PYTHONPATH PYTHONNOUSERSITE=1 python3 -m pip install --isolated --quiet --disable-pip-version-check \
      --root-user-action=ignore --require-hashes --no-deps --only-binary=:all: --ignore-installed \
      --no-warn-script-location --no-warn-conflicts --prefix "$ctx/prefix" -r "$lock"
    touch "$ctx/prefix/.complete-${lock_sha:0:16}"
  fi
  cp docker/Dockerfile.notebook "$ctx/Dockerfile"
  cp docker/notebook/nbl_identity.py docker/notebook/nbl_pool_env.py docker/notebook/nbl_pool_env.pth \
    docker/notebook/nbl_report.py docker/notebook/nbl_lean_server.py docker/notebook/nbl_lean_server.pth "$lock" "$ctx/"
  rm -rf "$ctx/lab" "$ctx/profile.d" && cp -r docker/notebook/lab "$ctx/lab" && cp -r docker/notebook/profile.d "$ctx/profile.d"
  printf '%s\n' "$lock_sha" >"$ctx/lock.sha256"
  printf 'prefix/bin\nprefix/etc\n' >"$ctx/.dockerignore"
  log "building $nb_tag"
  # No network in the build: nothing in it fetches anything.
  nb_id=$(DOCKER_BUILDKIT=0 docker build --quiet --network none \
    --label "nbl.inputs_sha256=$inputs_sha" --label "nbl.lock_sha256=$lock_sha" \
    --label "org.opencontainers.image.version=${inputs_sha:0:12}" "$ctx")
  # pip check with the image's own python3 over the image's own packages only (pip itself mounted beside them).
  pip_dir=$(python3 -c 'import os, pip; print(os.path.dirname(pip.__file__))')
  if ! check=$(docker run --rm --network none --entrypoint /usr/bin/python3 -e PYTHONPATH=/opt/nbl-pip \
      -v "$pip_dir:/opt/nbl-pip/pip:ro" "$nb_id" -m pip check 2>&1); then
    printf '%s\n' "$check" >&2
    docker rmi "$nb_id" >/dev/null 2>&1 || true
    echo "[build-images] pip check found conflicts in the notebook image's packages: not tagged" >&2
    exit 1
  fi
  docker tag "$nb_id" "$nb_tag"
fi
docker tag "$nb_tag" launcher-notebook:latest

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
    # Isolated from the host's packages and pip settings, like the notebook's prefix (its own full set of packages).
    env -u PYTHONPATH PYTHONNOUSERSITE=1 python3 -m pip install --isolated --quiet --disable-pip-version-check \
      --root-user-action=ignore --ignore-installed --no-warn-script-location --no-warn-conflicts \
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
    DOCKER_BUILDKIT=0 docker build --quiet --network none --label "launcher.inputs=$app_hash" -t launcher-app:latest "$ctx" >/dev/null
  fi
fi
log "images ready: $(docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^launcher-' | tr '\n' ' ')"
