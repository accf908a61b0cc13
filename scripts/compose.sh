#!/usr/bin/env bash
# Run the product with docker-compose on this Docker host, offline.
#
#   scripts/compose.sh up                           build images, prepare folders, data and secrets, start;
#                                                   on first up, create the console users
#   scripts/compose.sh down [-v]                    stop (and with -v drop Redis's volume)
#   scripts/compose.sh exec -T worker launcher ...  anything else goes to docker-compose
#
# Secrets: generated on first use into $LAUNCHER_STATE/secrets.env (mode 0600; cookie key, Flower and
# Redis passwords), reused afterwards, passed to docker-compose through the environment, never printed.
# Console users: on first up SEED_USERS (default "alice:researcher admin:admin") with generated
# passwords written to $LAUNCHER_STATE/initial-passwords (mode 0600). More, without a TTY:
#   printf '%s\n' "$PW" | scripts/compose.sh exec -T console python3 -m ui.users add --user bob --role researcher --password-stdin
#
# Settings: LAUNCHER_STATE (host folder for data, workspaces, sockets, secrets; default var/compose),
# LAUNCHER_BIND (address the published ports listen on, 127.0.0.1), LAUNCHER_PORT (entry point, 8080),
# LAUNCHER_CONSOLE_PORT (8501), LAUNCHER_FLOWER_PORT (5555), LAUNCHER_SERVICE_UID (uid of the console,
# Flower and Beat, 59100), LAUNCHER_INSTANCE, COMPOSE_PROJECT_NAME (nbl), SAMPLE_PRESET (ci), and any
# LAUNCHER_* variable of docs/configuration.md that docker-compose.yml passes on.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
export LAUNCHER_STATE=${LAUNCHER_STATE:-$repo/var/compose}
export LAUNCHER_REPO=$repo
export LAUNCHER_PORT=${LAUNCHER_PORT:-8080}
export LAUNCHER_CONSOLE_PORT=${LAUNCHER_CONSOLE_PORT:-8501}
export LAUNCHER_FLOWER_PORT=${LAUNCHER_FLOWER_PORT:-5555}
export LAUNCHER_PUBLIC_URL=${LAUNCHER_PUBLIC_URL:-http://nb.localhost:$LAUNCHER_PORT}
export LAUNCHER_CONSOLE_URL=${LAUNCHER_CONSOLE_URL:-http://127.0.0.1:$LAUNCHER_CONSOLE_PORT}
export LAUNCHER_SERVICE_UID=${LAUNCHER_SERVICE_UID:-59100}
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-nbl}
compose() { docker-compose -f "$repo/docker-compose.yml" "$@"; }
log() { printf '[compose] %s\n' "$*" >&2; }
need_root() {  # up and down mount and unmount the warm pool's slots folder on this host
  if ((EUID != 0)); then
    log "$1 needs root: it makes $LAUNCHER_STATE/pool-slots a shared mount point for the warm pool (run it with sudo)"
    exit 1
  fi
}

mkdir -p "$LAUNCHER_STATE"
secrets=$LAUNCHER_STATE/secrets.env
scripts/secrets.sh "$secrets"
set -a
# shellcheck source=/dev/null
source "$secrets"
set +a

cmd=${1:-up}
shift || true
case $cmd in
  up)
    need_root up
    scripts/build-images.sh --app
    mkdir -p "$LAUNCHER_STATE"/{data,workspaces,sessions,console,template-store,reports,lab-static,python-prefix}
    chmod 755 "$LAUNCHER_STATE"/{template-store,lab-static,python-prefix}; chmod 711 "$LAUNCHER_STATE/reports"
    chmod 755 "$LAUNCHER_STATE"; chmod 711 "$LAUNCHER_STATE"/{workspaces,sessions}
    # The console's own folder (the users file): its uid only.
    chown "$LAUNCHER_SERVICE_UID:$LAUNCHER_SERVICE_UID" "$LAUNCHER_STATE/console"
    chmod 700 "$LAUNCHER_STATE/console"
    scripts/sample-data.sh "$LAUNCHER_STATE/data"
    # The warm pool's slots folder: a mount point with shared propagation on the host, so that the worker's binds
    # (made in its container, on its rshared view of this folder) reach the notebooks (docs/operations.md).
    slots=$LAUNCHER_STATE/pool-slots
    mkdir -p "$slots" && chmod 755 "$slots"
    findmnt -rn --mountpoint "$slots" >/dev/null || mount --bind "$slots" "$slots"
    mount --make-rshared "$slots"
    compose up -d "$@"
    for _ in $(seq 100); do
      curl -sf "http://127.0.0.1:$LAUNCHER_PORT/healthz" >/dev/null && break
      sleep 0.2
    done
    console_up() {  # the console answers its health check (asked inside its container: any LAUNCHER_BIND)
      compose exec -T console python3 -c \
        "import urllib.request as u; u.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=2)" >/dev/null 2>&1
    }
    for _ in $(seq 60); do console_up && break; sleep 1; done
    if ! console_up; then
      log "the console does not answer (see: scripts/compose.sh logs console); console users not created"
      exit 1
    fi
    if [[ ! -s $LAUNCHER_STATE/console/users.json ]]; then
      passwords=$LAUNCHER_STATE/initial-passwords
      (umask 077 && : >"$passwords")
      chmod 600 "$passwords"
      for entry in ${SEED_USERS:-alice:researcher admin:admin}; do
        pw=$(python3 -c "import secrets; print(secrets.token_urlsafe(12))")
        printf '%s\n' "$pw" | compose exec -T console \
          python3 -m ui.users add --user "${entry%%:*}" --role "${entry##*:}" --password-stdin >/dev/null
        printf '%s %s %s\n' "${entry%%:*}" "${entry##*:}" "$pw" >>"$passwords"
      done
      log "console users created; their passwords are in $passwords"
    fi
    log "console http://127.0.0.1:$LAUNCHER_CONSOLE_PORT  entry point http://127.0.0.1:$LAUNCHER_PORT" \
      " flower http://127.0.0.1:$LAUNCHER_FLOWER_PORT (user operator, password: LAUNCHER_FLOWER_PASSWORD in $secrets)"
    log "launch: scripts/compose.sh exec -T console python3 -m launcher.cli start --user alice --template alpha_research --wait"
    ;;
  down)
    need_root down
    # The warm pool goes with its worker: stop the worker (it would refill the pool), remove this instance's idle pool
    # notebooks (a claimed one has its session's name and is left running, like every session) and what the worker
    # left half done, then release the slots folder unless a session still has a workspace bound in it.
    compose stop worker
    mapfile -t idle < <(docker ps -aq --filter "name=^${LAUNCHER_INSTANCE:-nbl}-pool-" --filter "label=io.nblauncher.pool")
    if ((${#idle[@]})); then docker rm -f "${idle[@]}" >/dev/null; fi
    # A copy out of the notebook image (JupyterLab's assets, its Python packages) that the worker was making in the
    # background when it stopped leaves its container behind (created, never started): remove this state's.
    mapfile -t copies < <(docker ps -a --filter label=io.nblauncher.archive --format '{{.ID}} {{.Label "io.nblauncher.archive"}}' |
      awk -v p="$LAUNCHER_STATE/" 'index($2, p) == 1 {print $1}')
    if ((${#copies[@]})); then docker rm -f "${copies[@]}" >/dev/null; fi
    compose down "$@"
    slots=$LAUNCHER_STATE/pool-slots
    if findmnt -rn --mountpoint "$slots" >/dev/null; then
      if findmnt -rn -o TARGET | awk -v p="$slots/" 'index($0, p) == 1 {held = 1} END {exit !held}'; then
        log "$slots stays mounted: sessions still have workspaces bound there (stop them, then down again)"
      else
        umount "$slots"
        find "$slots" -mindepth 1 -maxdepth 1 -type d -empty -delete
      fi
    fi
    ;;
  *) compose "$cmd" "$@" ;;
esac
