#!/usr/bin/env bash
# Install what this product needs on a Debian 12 host with Docker: Debian packages and the
# Python packages (from PyPI). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
# libnginx-mod-http-brotli-static: the entry point serves JupyterLab's assets precompressed with brotli (optional:
# without it they go gzip-compressed on the fly).
for pkg in redis-server nginx-light libnginx-mod-http-brotli-static debootstrap iproute2 chromium; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "[install] apt-get install ${need[*]}" >&2
  apt-get update -qq
  # Debian starts these services on install; the product runs its own instances instead.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi
echo "[install] pip install -e .[dev]" >&2
python3 -m pip install --quiet --disable-pip-version-check -e ".[dev]"
