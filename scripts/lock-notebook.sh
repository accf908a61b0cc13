#!/usr/bin/env bash
# Regenerate docker/notebook-requirements.lock (exact versions and sha256 hashes) from
# docker/notebook-requirements.txt, for the notebook image's Python and platform: Debian bookworm's
# python3 (3.11.2, glibc 2.36) on x86_64. The build (scripts/build-images.sh) installs exactly this file.
#
#   scripts/lock-notebook.sh                    keep the current pins, add/drop what requirements.txt changed
#   scripts/lock-notebook.sh --upgrade          move every package to the newest version the ranges allow
#   scripts/lock-notebook.sh -P pandas          upgrade one package
#
# The tool is uv, pinned in pyproject.toml's dev extras (scripts/install.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
python_version=${NBL_LOCK_PYTHON:-3.11.2}
platform=${NBL_LOCK_PLATFORM:-x86_64-manylinux_2_36}
command -v uv >/dev/null || { echo "uv is not installed: run scripts/install.sh" >&2; exit 1; }
# Wheels only: the image installs no compiler, and the host builds nothing for it.
uv pip compile docker/notebook-requirements.txt \
  --generate-hashes --only-binary :all: \
  --python-version "$python_version" --python-platform "$platform" \
  --custom-compile-command "scripts/lock-notebook.sh" \
  --output-file docker/notebook-requirements.lock --quiet "$@"
# The build refuses a lock older than the requirements: it compares this digest of their requirement lines
# (comments and blank lines left out) with requirements.txt's (same command in scripts/build-images.sh).
digest=$(sed -e 's/#.*//' -e 's/[[:space:]]*$//' docker/notebook-requirements.txt | grep -v '^$' | sha256sum | cut -c1-16)
echo "# requirements digest: $digest" >>docker/notebook-requirements.lock
echo "[lock-notebook] docker/notebook-requirements.lock: $(grep -c '^[A-Za-z0-9]' docker/notebook-requirements.lock) packages," \
  "sha256 $(sha256sum docker/notebook-requirements.lock | cut -c1-12)" >&2
