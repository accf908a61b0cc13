#!/usr/bin/env bash
# Stop what scripts/start.sh started on this host, by the PIDs it recorded.
#
#   scripts/stop.sh [--sessions] [--keep-redis]
#
# Notebook containers keep running unless --sessions is given (then every live session of the installation is
# stopped first, and this host's warm pool is removed once its worker has stopped). Redis, which every Docker host of the installation shares, is stopped only when no other host
# is up (announced itself in the last LAUNCHER_HOST_DOWN_AFTER_S); --keep-redis keeps it in any case (a restart).
set -euo pipefail
cd "$(dirname "$0")/.."
set -a
[[ -f var/secrets.env ]] && source var/secrets.env
[[ -f var/launcher.env ]] && source var/launcher.env
set +a
sessions=0 keep_redis=0
for arg in "$@"; do
  case $arg in
    --sessions) sessions=1 ;;
    --keep-redis) keep_redis=1 ;;
    *) echo "usage: scripts/stop.sh [--sessions] [--keep-redis]" >&2; exit 2 ;;
  esac
done
if ((sessions)); then
  PYTHONPATH=$PWD python3 -m launcher.cli stop-all --wait || true
fi
if ((!keep_redis)) && [[ -f var/run/redis.pid ]]; then
  others=$(PYTHONPATH=$PWD timeout 10 python3 - <<'PY' 2>/dev/null || true
from launcher.adapters.redis_store import SessionStore
from launcher.settings import Settings

s = Settings()
print(" ".join(h.name for h in SessionStore.from_settings(s).hosts() if h.name != s.host_name and h.state.value != "down"))
PY
)
  if [[ -n $others ]]; then
    echo "[stop] keeping Redis: other Docker hosts use it ($others); stop them first, or stop Redis by hand" >&2
    keep_redis=1
  fi
fi
for name in console flower beat worker entrypoint redis; do
  if [[ $name == redis ]] && ((sessions)); then
    # The worker is stopped: its warm pool (idle notebooks, kept across restarts) goes too.
    PYTHONPATH=$PWD timeout 60 python3 - <<'PY' || true
from launcher.bootstrap import build_worker_context
from launcher.settings import Settings
from workers import pool

ctx = build_worker_context(Settings())
for slot in ctx.store.pool_slots(ctx.settings.host_name):
    pool.destroy(ctx, slot)
PY
  fi
  [[ $name == redis ]] && ((keep_redis)) && continue
  pidfile=var/run/$name.pid
  [[ -f $pidfile ]] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    echo "[stop] $name (pid $pid) stopped" >&2
  fi
  rm -f "$pidfile"
done
