#!/usr/bin/env bash
# Start the whole product on this machine, with sample data: Redis, the entry point (nginx), a
# Celery worker for this Docker host, Celery Beat (heartbeat, reap, reconcile), Flower and the
# Streamlit console. On first start it generates the secrets (cookie key, Flower and Redis passwords)
# into var/secrets.env (mode 0600, never printed) and creates console users from SEED_USERS (default: a
# researcher "alice" and an admin "admin", passwords kept in var/initial-passwords, mode 0600).
# Everything runs in the background; logs and PIDs are in var/. Stop with scripts/stop.sh. Settings come
# from LAUNCHER_* variables (docs/configuration.md), var/secrets.env and var/launcher.env (which wins).
#
#   scripts/start.sh             start what is not running (processes already running are left as they are)
#   scripts/start.sh --restart   after changing var/launcher.env: stop this host's processes (not Redis, not the
#                                notebooks) and start them again with the new settings
#   SKIP_INSTALL=1               skip scripts/install.sh (packages already installed)
#
# Redis requires the password (config file var/redis/redis.conf, mode 0600) and listens on loopback.
# For other Docker hosts set REDIS_TLS_BIND (addresses to listen on besides 127.0.0.1, e.g. 10.0.0.5)
# and optionally REDIS_TLS_PORT (6380): Redis then speaks TLS only, with a certificate from a CA made
# by scripts/redis-tls.sh in var/tls (docs/operations.md, "Adding a Docker host").
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
if [[ "${1:-}" == --restart ]]; then
  scripts/stop.sh --keep-redis
elif [[ -n "${1:-}" ]]; then
  echo "usage: scripts/start.sh [--restart]" >&2; exit 2
fi
umask 022
mkdir -p var/log var/run
chmod 700 var/log
scripts/secrets.sh var/secrets.env
set -a
source var/secrets.env
[[ -f var/launcher.env ]] && source var/launcher.env
set +a
if [[ -n "${REDIS_TLS_BIND:-}" ]]; then
  export LAUNCHER_REDIS_URL=${LAUNCHER_REDIS_URL:-rediss://127.0.0.1:${REDIS_TLS_PORT:-6380}/0}
  export LAUNCHER_REDIS_CA_FILE=${LAUNCHER_REDIS_CA_FILE:-$root/var/tls/ca.crt}
fi
export LAUNCHER_REDIS_URL=${LAUNCHER_REDIS_URL:-redis://127.0.0.1:6379/0}
export LAUNCHER_ENTRYPOINT_LISTEN=${LAUNCHER_ENTRYPOINT_LISTEN:-127.0.0.1:8080}
# Sessions are served on subdomains of the public URL (*.localhost resolves to loopback in browsers).
export LAUNCHER_PUBLIC_URL=${LAUNCHER_PUBLIC_URL:-http://nb.localhost:${LAUNCHER_ENTRYPOINT_LISTEN##*:}}
export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}
log() { printf '[start] %s\n' "$*" >&2; }

[[ "${SKIP_INSTALL:-0}" == 1 ]] || scripts/install.sh
scripts/build-images.sh

scripts/sample-data.sh "${LAUNCHER_DATA_DIR:-$root/var/data}"

running() { [[ -f var/run/$1.pid ]] && kill -0 "$(cat "var/run/$1.pid")" 2>/dev/null; }
launch() {  # name, command...
  local name=$1; shift
  if running "$name"; then log "$name already running (pid $(cat "var/run/$name.pid"))"; return; fi
  setsid "$@" >>"var/log/$name.log" 2>&1 < /dev/null &
  echo $! >"var/run/$name.pid"
  log "$name started (pid $!, log var/log/$name.log)"
}

# Where Redis is, and the password every client uses (Settings.redis_dsn(): the URL's, else LAUNCHER_REDIS_PASSWORD).
eval "$(python3 - <<'PY'
import shlex
from urllib.parse import unquote, urlsplit

from launcher.settings import Settings

u = urlsplit(Settings().redis_dsn())
print(f"redis_scheme={u.scheme} redis_host={shlex.quote(u.hostname or '')} redis_port={u.port or 6379}")
print(f"redis_password={shlex.quote(unquote(u.password or ''))}")
PY
)"
redis_cli() {  # redis-cli against the configured Redis; the password goes in the environment, not argv
  local args=(-h "$redis_host" -p "$redis_port")
  [[ $redis_scheme == rediss ]] && args+=(--tls ${LAUNCHER_REDIS_CA_FILE:+--cacert "$LAUNCHER_REDIS_CA_FILE"})
  REDISCLI_AUTH=$redis_password redis-cli "${args[@]}" "$@" 2>/dev/null
}
# Start a local Redis only when the configured one is local and not answering (another host shares the first host's).
if [[ $redis_host =~ ^(127\.0\.0\.1|localhost)$ ]] && [[ "$(redis_cli ping)" != PONG ]]; then
  if [[ "$(redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null)" == PONG ]]; then
    log "a Redis without a password already answers on port $redis_port: stop it (scripts/stop.sh) and start again"
    exit 1
  fi
  [[ -n $redis_password ]] || { log "no Redis password (var/secrets.env holds LAUNCHER_REDIS_PASSWORD)"; exit 1; }
  mkdir -p var/redis
  chmod -R go-rwx var/redis  # data written before passwords and umask 077 existed
  if [[ $redis_scheme == rediss ]]; then
    [[ -n "${REDIS_TLS_BIND:-}" ]] || { log "rediss:// on this host needs REDIS_TLS_BIND (docs/operations.md)"; exit 1; }
    # shellcheck disable=SC2086  # REDIS_TLS_BIND may hold several addresses
    scripts/redis-tls.sh var/tls $REDIS_TLS_BIND $(hostname) $(hostname -f 2>/dev/null || true) ${REDIS_TLS_NAMES:-}
  fi
  tls_args=()
  [[ $redis_scheme == rediss ]] && read -ra tls_args <<<"var/tls $REDIS_TLS_BIND"
  REDIS_PASSWORD=$redis_password scripts/redis-conf.sh var/redis/redis.conf var/redis "$redis_port" "${tls_args[@]}"
  umask 077  # Redis's data and append-only file: owner only
  launch redis redis-server "$root/var/redis/redis.conf"
  umask 022
  for _ in $(seq 50); do [[ "$(redis_cli ping)" == PONG ]] && break; sleep 0.1; done
fi
launch entrypoint python3 -m launcher.entrypoint run --prefix "$root/var/entrypoint"
queues=$(python3 -c "from launcher.settings import Settings; print(Settings().worker_queues)")
launch worker python3 -m celery -A workers.app worker -Q "$queues" -P threads \
  -c "${LAUNCHER_WORKER_CONCURRENCY:-8}" -n "worker-${LAUNCHER_HOST_NAME:-local}@%h" --loglevel INFO

if [[ "${START_BEAT:-1}" == 1 ]]; then  # one Beat, Flower and console per installation: START_BEAT=0 on added hosts
  launch beat python3 -m celery -A workers.app beat --loglevel INFO --schedule "$root/var/run/beat-schedule"
  launch flower python3 -m workers.flower
  users=${LAUNCHER_USERS_FILE:-$root/var/users.json}
  if [[ ! -f $users ]]; then
    umask 077
    for entry in ${SEED_USERS:-alice:researcher admin:admin}; do
      pw=$(python3 -c "import secrets; print(secrets.token_urlsafe(12))")
      echo "$pw" | python3 -m ui.users add --user "${entry%%:*}" --role "${entry##*:}" --password-stdin >/dev/null
      echo "${entry%%:*} ${entry##*:} $pw" >>var/initial-passwords
    done
    log "console users created; their passwords are in var/initial-passwords (change them: python3 -m ui.users add ...)"
  fi
  console_port=${LAUNCHER_CONSOLE_PORT:-8501}
  launch console python3 -m streamlit run ui/asgi.py --server.port "$console_port" \
    --server.address "${LAUNCHER_CONSOLE_ADDRESS:-127.0.0.1}" --server.headless true \
    --browser.gatherUsageStats false --client.toolbarMode minimal
fi

for _ in $(seq 100); do grep -q "ready." var/log/worker.log 2>/dev/null && break; sleep 0.2; done
log "console: ${LAUNCHER_CONSOLE_URL:-http://127.0.0.1:${console_port:-8501}}"
log "flower: http://${LAUNCHER_FLOWER_LISTEN:-127.0.0.1:5555} (user ${LAUNCHER_FLOWER_USER:-operator}, password: LAUNCHER_FLOWER_PASSWORD in var/secrets.env)"
log "entry point: $LAUNCHER_PUBLIC_URL   (launch with: launcher start --user alice --template alpha_research --wait)"
