#!/usr/bin/env bash
# Make sample data with the notebook image (uid 1000, no network) and import it as a data snapshot of the data
# root DIR (DIR/snapshots/<id>/, DIR/current -> it: launcher.snapshots), unless DIR's current snapshot already
# holds data from this generator version. Usage: scripts/sample-data.sh DIR [PRESET]   (PRESET: ci, default)
#
# A DIR in the layout from before snapshots (the data files directly in DIR, no snapshots/) is converted: its
# files are removed and the data is generated again as a snapshot. Run it while no session runs on the old data.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$1
preset=${2:-${SAMPLE_PRESET:-ci}}
want=$(sed -n 's/^VERSION = "\(.*\)"/\1/p' notebooks/lib/research/sampledata.py)
version_of() { python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('version',''))" "$1" 2>/dev/null || true; }
have=""
if [[ -d "$dir/snapshots" && -L "$dir/current" ]]; then
  have=$(version_of "$dir/current/data/MANIFEST.json")
  if [[ "$have" == "$want" ]]; then
    exit 0
  fi
elif [[ -f "$dir/MANIFEST.json" ]]; then
  have="$(version_of "$dir/MANIFEST.json") (before snapshots)"
fi
echo "[sample-data] generating ($preset preset, generator $want${have:+, replacing $have}) into a snapshot of $dir" >&2
mkdir -p "$dir"
chmod 755 "$dir"
if [[ ! -d "$dir/snapshots" ]]; then  # the old layout: its files go (they are generated again below)
  find "$dir" -mindepth 1 -maxdepth 1 ! -name snapshots ! -name current -exec rm -rf {} +
fi
staging="$dir/.sample-$$"
trap 'rm -rf "$staging"' EXIT
mkdir "$staging"
chown 1000:1000 "$staging"
docker run --rm --network none -u 1000:1000 -v "$PWD/notebooks/lib:/opt/research:ro" \
  -e PYTHONPATH=/opt/research -v "$staging:/out" launcher-notebook:latest \
  python3 -m research.sampledata --preset "$preset" --out /out >/dev/null
# Hard links: no copy of the files; the staging names go, the snapshot keeps the only links (root's, read-only).
PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} python3 -m launcher.snapshots --root "$dir" import --link \
  --label "sample data, generator $want, $preset preset" "$staging" >&2
