#!/usr/bin/env bash
# Write a redis.conf, mode 0600, that requires the password in $REDIS_PASSWORD (taken from the
# environment: never on a command line, where `ps` would show it).
#
#   REDIS_PASSWORD=... scripts/redis-conf.sh CONF DATA_DIR PORT [TLS_DIR [BIND_ADDRESS ...]]
#
# Without TLS_DIR: Redis listens on 127.0.0.1:PORT only. With TLS_DIR (ca.crt, redis.crt, redis.key from
# scripts/redis-tls.sh): TLS only (the plain port is off) on 127.0.0.1 and each BIND_ADDRESS, port PORT.
# Always protected mode, append-only persistence in DATA_DIR (start redis-server with umask 077 so its
# files are the owner's only).
set -euo pipefail
conf=${1:?usage: REDIS_PASSWORD=... scripts/redis-conf.sh CONF DATA_DIR PORT [TLS_DIR [BIND_ADDRESS ...]]}
data=${2:?data dir}
port=${3:?port}
tls=${4:-}
shift 3; shift || true
[[ -n "${REDIS_PASSWORD:-}" ]] || { echo "redis-conf: REDIS_PASSWORD is empty: refusing to write a Redis without one" >&2; exit 2; }
quote() { local v=${1//\\/\\\\}; v=${v//\"/\\\"}; printf '"%s"' "$v"; }
umask 077
mkdir -p "$data" "$(dirname "$conf")"
chmod 700 "$data"
tmp=$(mktemp "$conf.XXXXXX")
{
  echo "# written by scripts/redis-conf.sh; holds the password: keep mode 0600"
  echo "bind 127.0.0.1${*:+ $*}"
  echo "protected-mode yes"
  echo "requirepass $(quote "$REDIS_PASSWORD")"
  echo "dir $(quote "$(cd "$data" && pwd)")"
  echo "appendonly yes"
  if [[ -n $tls ]]; then
    tls=$(cd "$tls" && pwd)
    echo "port 0"
    echo "tls-port $port"
    echo "tls-cert-file $(quote "$tls/redis.crt")"
    echo "tls-key-file $(quote "$tls/redis.key")"
    echo "tls-ca-cert-file $(quote "$tls/ca.crt")"
    echo "tls-auth-clients no"
    echo 'tls-protocols "TLSv1.2 TLSv1.3"'
  else
    echo "port $port"
  fi
} >"$tmp"
chmod 600 "$tmp"
mv "$tmp" "$conf"
