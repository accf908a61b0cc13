#!/usr/bin/env bash
# Make sure FILE holds this installation's secrets, generating the missing ones; never prints them.
#
#   scripts/secrets.sh FILE        (scripts/start.sh: var/secrets.env; scripts/compose.sh: $LAUNCHER_STATE/secrets.env)
#
# FILE (mode 0600) has one NAME=value a line: LAUNCHER_COOKIE_SECRET (signs console logins),
# LAUNCHER_FLOWER_PASSWORD (Flower's basic auth), LAUNCHER_REDIS_PASSWORD (Redis requirepass) and
# LAUNCHER_METRICS_TOKEN (the bearer token of the console's /metrics, for Prometheus). Each
# is secrets.token_urlsafe(32), made once on first start and reused afterwards; delete a line to
# rotate that secret on the next start.
set -euo pipefail
file=${1:?usage: scripts/secrets.sh FILE}
umask 077
mkdir -p "$(dirname "$file")"
touch "$file"
chmod 600 "$file"
made=()
for name in LAUNCHER_COOKIE_SECRET LAUNCHER_FLOWER_PASSWORD LAUNCHER_REDIS_PASSWORD LAUNCHER_METRICS_TOKEN; do
  grep -q "^$name=." "$file" && continue
  value=$(python3 -c "import secrets; print(secrets.token_urlsafe(32))")
  printf '%s=%s\n' "$name" "$value" >>"$file"
  made+=("$name")
done
if ((${#made[@]})); then
  printf '[secrets] generated %s into %s (mode 0600)\n' "${made[*]}" "$file" >&2
fi
