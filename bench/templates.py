"""Benchmark: sample-data generation per preset, and each template's run time on the default preset.

    python bench/templates.py [--presets ci default] [--run-on default]

Everything runs inside the notebook image as a notebook would (uid 1000, no network, data read-only
for the templates). Prints wall times and sizes on disk.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.stack import TEMPLATES, run_in_notebook_image, run_template  # noqa: E402


def timed(command: list[str], mounts: dict[Path, str]) -> float:
    t0 = time.perf_counter()
    done = run_in_notebook_image(command, mounts)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return time.perf_counter() - t0


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["ci", "default"])
    ap.add_argument("--run-on", default="default")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nbl-tpl-", dir="/tmp"))
    os.chmod(work, 0o777)
    for preset in args.presets:
        out = work / preset
        out.mkdir()
        os.chown(out, 1000, 1000)
        seconds = timed(["python3", "-m", "research.sampledata", "--preset", preset, "--out", "/out"], {out: "/out"})
        print(f"generate --preset {preset}: {seconds:.1f} s, {size(out) / 2**20:.1f} MiB on disk")
    data = work / args.run_on
    results = work / "out"
    results.mkdir()
    os.chmod(results, 0o777)
    for name in TEMPLATES:
        t0 = time.perf_counter()
        done = run_template(name, data, results)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-2000:])
        seconds = time.perf_counter() - t0
        print(f"{name} on --preset {args.run_on}: {seconds:.1f} s (papermill, including kernel start)")
    print(f"outputs kept in {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
