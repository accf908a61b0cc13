#!/usr/bin/env bash
# Remove old launcher-notebook:* images that nothing needs (docs/operations.md, "Notebook image: lockfile,
# tags, pruning"). Kept: the current image (launcher-notebook:latest or $LAUNCHER_NOTEBOOK_IMAGE), images a
# container uses or an --keep-id names, images younger than the retention (--keep-days, default 30 or
# $LAUNCHER_IMAGE_RETENTION_DAYS). Other repositories' images are never touched.
#
#   scripts/prune-images.sh --dry-run               say what would be removed
#   scripts/prune-images.sh --keep-days 14          remove unreferenced images older than two weeks
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
exec python3 -m launcher.images prune "$@"
