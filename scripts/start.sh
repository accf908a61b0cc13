#!/usr/bin/env bash
# Start the whole product on this machine, with sample data: Redis, the entry point (nginx), a
# Celery worker for this Docker host, Celery Beat (heartbeat, reap, reconcile), Flower and the
# Streamlit console. On first start it creates console users from SEED_USERS (default: a researcher
# "alice" and an admin "admin", passwords printed once and kept in var/initial-passwords). Everything runs in the background; logs and PIDs are in
# var/. Stop with scripts/stop.sh. Settings come from LAUNCHER_* variables (docs/configuration.md),
# and from var/launcher.env when it exists.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mkdir -p var/log var/run
[[ -f var/launcher.env ]] && { set -a; source var/launcher.env; set +a; }
export LAUNCHER_REDIS_URL=${LAUNCHER_REDIS_URL:-redis://127.0.0.1:6379/0}
export LAUNCHER_ENTRYPOINT_LISTEN=${LAUNCHER_ENTRYPOINT_LISTEN:-127.0.0.1:8080}
export LAUNCHER_PUBLIC_URL=${LAUNCHER_PUBLIC_URL:-http://${LAUNCHER_ENTRYPOINT_LISTEN}}
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

read -r redis_host redis_port < <(python3 -c "import os,urllib.parse as u; p=u.urlparse(os.environ['LAUNCHER_REDIS_URL']); print(p.hostname, p.port or 6379)")
# Start a local Redis only when the configured one is local and not answering (another host shares the first host's).
if [[ $redis_host =~ ^(127\.0\.0\.1|localhost)$ ]] && ! redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
  mkdir -p var/redis
  launch redis redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$root/var/redis" --appendonly yes
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
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
log "flower: http://${LAUNCHER_FLOWER_LISTEN:-127.0.0.1:5555} (user ${LAUNCHER_FLOWER_USER:-operator})"
log "entry point: $LAUNCHER_PUBLIC_URL   (launch with: launcher start --user alice --template alpha_research --wait)"
