#!/usr/bin/env bash
# Make a private CA and a server certificate for Redis's TLS port, unless DIR already has them.
#
#   scripts/redis-tls.sh DIR [NAME_OR_IP ...]
#
# Writes DIR/ca.crt (copy it to every other host: LAUNCHER_REDIS_CA_FILE), DIR/ca.key,
# DIR/redis.crt and DIR/redis.key (keys mode 0600). The server certificate is valid for localhost,
# 127.0.0.1 and each NAME_OR_IP given (the names other hosts put in rediss://NAME:PORT). Adding a name
# later: delete DIR/redis.crt and run again (the CA is kept, so other hosts need no new file).
set -euo pipefail
dir=${1:?usage: scripts/redis-tls.sh DIR [NAME_OR_IP ...]}
shift
umask 077
mkdir -p "$dir"
chmod 755 "$dir"  # the CA certificate is public (other hosts need it); the keys inside are mode 0600
log() { printf '[redis-tls] %s\n' "$*" >&2; }

if [[ ! -f $dir/ca.crt || ! -f $dir/ca.key ]]; then
  openssl req -x509 -newkey rsa:3072 -sha256 -days 3650 -nodes -subj "/CN=notebook launcher Redis CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  chmod 644 "$dir/ca.crt"
  log "CA made: $dir/ca.crt"
fi

if [[ ! -f $dir/redis.crt || ! -f $dir/redis.key ]]; then
  san="DNS:localhost,IP:127.0.0.1"
  for name in "$@"; do
    if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then entry="IP:$name"; else entry="DNS:$name"; fi
    [[ ",$san," == *",$entry,"* ]] || san+=",$entry"
  done
  openssl req -newkey rsa:3072 -sha256 -nodes -subj "/CN=${1:-localhost}" \
    -keyout "$dir/redis.key" -out "$dir/redis.csr" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
    "$san" >"$dir/redis.ext"
  openssl x509 -req -sha256 -days 825 -in "$dir/redis.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -CAcreateserial -extfile "$dir/redis.ext" -out "$dir/redis.crt" 2>/dev/null
  rm -f "$dir/redis.csr" "$dir/redis.ext"
  chmod 644 "$dir/redis.crt"
  log "server certificate made: $dir/redis.crt ($san)"
fi
