"""Benchmark: sample-data generation per preset, and each template's run time on the default preset.

    python bench/templates.py [--presets ci default] [--run-on default]
    python bench/templates.py --presets --data DIR [--notebooks DIR] [--image IMAGE] [--only NAME ...] [--cells]

Everything runs inside the notebook image as a notebook would (uid 1000, no network, data read-only
for the templates). Prints wall times and sizes on disk. For each template: the end-to-end wall time
(``docker run`` of papermill, kernel start included), the CPU seconds used inside the container (less
sensitive than wall time to other work on a shared machine), the kernel's time in cells, and with
``--cells`` the slowest cells (papermill records each cell's duration).

``--data DIR`` reuses generated data instead of generating it; ``--notebooks DIR`` runs the templates
and research library of another checkout's ``notebooks/`` folder and ``--image`` another notebook
image (for before/after comparisons).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.stack import DEFAULT_IMAGE, TEMPLATES, run_in_notebook_image  # noqa: E402

# Runs a command and reports its wall time and the CPU time of all its descendants (papermill and the
# kernel it starts and waits for) as the last line of stderr.
TIMER = (
    "import json, resource, subprocess, sys, time\n"
    "t0 = time.perf_counter()\n"
    "rc = subprocess.call(sys.argv[1:])\n"
    "ru = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "report = {'rc': rc, 'wall': time.perf_counter() - t0, 'cpu': ru.ru_utime + ru.ru_stime}\n"
    "print(json.dumps(report), file=sys.stderr)\n"
)


def timed(command: list[str], mounts: dict[Path, str]) -> float:
    t0 = time.perf_counter()
    done = run_in_notebook_image(command, mounts)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return time.perf_counter() - t0


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_template_timed(name: str, data: Path, out: Path, notebooks: Path, image: str = DEFAULT_IMAGE) -> dict:
    """papermill on /templates/<name>.ipynb in the image, as tests.stack.run_template does, timed."""
    mounts = {data: "/data:ro", notebooks / "templates": "/templates:ro", out: "/out"}
    env = []
    if notebooks.resolve() != (ROOT / "notebooks").resolve():
        mounts[notebooks / "lib"] = "/opt/research-other:ro"
        env = ["env", "PYTHONPATH=/opt/research-other"]
    papermill = ["python3", "-m", "papermill", f"/templates/{name}.ipynb", f"/out/{name}.ipynb"]
    command = [*env, "python3", "-c", TIMER, *papermill, "-p", "output_dir", f"/out/{name}"]
    t0 = time.perf_counter()
    done = run_in_notebook_image(command, mounts, image)
    wall = time.perf_counter() - t0
    inner = json.loads(done.stderr.strip().splitlines()[-1])
    if done.returncode != 0 or inner["rc"] != 0:
        raise SystemExit(done.stderr[-3000:])
    nb = json.loads((out / f"{name}.ipynb").read_text())
    cells = []
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            first = next((line.strip() for line in cell["source"] if line.strip()), "")
            cells.append((cell["metadata"].get("papermill", {}).get("duration") or 0.0, first[:70]))
    return {"wall": wall, "cpu": inner["cpu"], "kernel": sum(d for d, _ in cells), "cells": cells}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="*", default=["ci", "default"], help="presets to generate (none: --data)")
    ap.add_argument("--run-on", default="default", help="the generated preset the templates run on")
    ap.add_argument("--data", type=Path, help="run the templates on this data folder instead of generating it")
    ap.add_argument("--notebooks", type=Path, default=ROOT / "notebooks", help="templates/ and lib/ to run")
    ap.add_argument("--image", default=DEFAULT_IMAGE, help="notebook image to run the templates in")
    ap.add_argument("--only", nargs="+", choices=TEMPLATES, default=list(TEMPLATES))
    ap.add_argument("--cells", action="store_true", help="print each template's five slowest cells")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nbl-tpl-", dir="/tmp"))
    os.chmod(work, 0o777)
    for preset in args.presets:
        out = work / preset
        out.mkdir()
        os.chown(out, 1000, 1000)
        seconds = timed(["python3", "-m", "research.sampledata", "--preset", preset, "--out", "/out"], {out: "/out"})
        print(f"generate --preset {preset}: {seconds:.1f} s, {size(out) / 2**20:.1f} MiB on disk")
    data = args.data.resolve() if args.data else work / args.run_on
    label = args.data or f"--preset {args.run_on}"
    results = work / "out"
    results.mkdir()
    os.chmod(results, 0o777)
    for name in args.only:
        r = run_template_timed(name, data, results, args.notebooks.resolve(), args.image)
        print(
            f"{name} on {label}: {r['wall']:.1f} s (papermill, including kernel start); "
            f"CPU {r['cpu']:.1f} s; in cells {r['kernel']:.1f} s",
            flush=True,
        )
        if args.cells:
            for seconds, source in sorted(r["cells"], reverse=True)[:5]:
                print(f"    {seconds:5.2f} s  {source}")
    print(f"outputs kept in {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
