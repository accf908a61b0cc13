#!/usr/bin/env bash
# Make sample data in DIR with the notebook image (uid 1000, no network), unless DIR already holds
# data from this generator version. Usage: scripts/sample-data.sh DIR [PRESET]   (PRESET: ci, default)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$1
preset=${2:-${SAMPLE_PRESET:-ci}}
want=$(sed -n 's/^VERSION = "\(.*\)"/\1/p' notebooks/lib/research/sampledata.py)
have=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('version',''))" "$dir/MANIFEST.json" 2>/dev/null || true)
if [[ "$have" == "$want" ]]; then
  exit 0
fi
echo "[sample-data] generating ($preset preset, generator $want${have:+, replacing $have}) into $dir" >&2
mkdir -p "$dir"
find "$dir" -mindepth 1 -delete
chown 1000:1000 "$dir"
docker run --rm --network none -u 1000:1000 -v "$PWD/notebooks/lib:/opt/research:ro" \
  -e PYTHONPATH=/opt/research -v "$dir:/out" launcher-notebook:latest \
  python3 -m research.sampledata --preset "$preset" --out /out >/dev/null
