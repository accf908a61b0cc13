#!/usr/bin/env bash
# Run the product with docker-compose on this Docker host, offline.
#
#   scripts/compose.sh up                           build images, prepare folders and data, start
#   scripts/compose.sh down [-v]                    stop (and with -v drop Redis's volume)
#   scripts/compose.sh exec worker launcher ...     anything else goes to docker-compose
#
# Settings: LAUNCHER_STATE (host folder for data, workspaces, sockets; default var/compose),
# LAUNCHER_PORT (entry point, 8080), LAUNCHER_FLOWER_PORT (5555), LAUNCHER_INSTANCE,
# COMPOSE_PROJECT_NAME (nbl), SAMPLE_PRESET (ci), and any LAUNCHER_* variable of docs/configuration.md.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
export LAUNCHER_STATE=${LAUNCHER_STATE:-$repo/var/compose}
export LAUNCHER_REPO=$repo
export LAUNCHER_PORT=${LAUNCHER_PORT:-8080}
export LAUNCHER_PUBLIC_URL=${LAUNCHER_PUBLIC_URL:-http://127.0.0.1:$LAUNCHER_PORT}
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-nbl}
compose() { docker-compose -f "$repo/docker-compose.yml" "$@"; }

cmd=${1:-up}
shift || true
case $cmd in
  up)
    scripts/build-images.sh --app
    mkdir -p "$LAUNCHER_STATE"/{data,workspaces,sessions}
    chmod 755 "$LAUNCHER_STATE"; chmod 711 "$LAUNCHER_STATE"/{workspaces,sessions}
    scripts/sample-data.sh "$LAUNCHER_STATE/data"
    compose up -d
    for _ in $(seq 100); do
      curl -sf "http://127.0.0.1:$LAUNCHER_PORT/healthz" >/dev/null && break
      sleep 0.2
    done
    echo "[compose] entry point http://127.0.0.1:$LAUNCHER_PORT  flower http://127.0.0.1:${LAUNCHER_FLOWER_PORT:-5555}" >&2
    echo "[compose] launch: scripts/compose.sh exec -T worker python3 -m launcher.cli start --user alice --template alpha_research --wait" >&2
    ;;
  *) compose "$cmd" "$@" ;;
esac
