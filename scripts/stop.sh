#!/usr/bin/env bash
# Stop what scripts/start.sh started, by the PIDs it recorded. Notebook containers keep running
# unless --sessions is given (then every live session is stopped first).
set -euo pipefail
cd "$(dirname "$0")/.."
set -a
[[ -f var/secrets.env ]] && source var/secrets.env
[[ -f var/launcher.env ]] && source var/launcher.env
set +a
if [[ "${1:-}" == --sessions ]]; then
  PYTHONPATH=$PWD python3 -m launcher.cli stop-all --wait || true
fi
for name in console flower beat worker entrypoint redis; do
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
