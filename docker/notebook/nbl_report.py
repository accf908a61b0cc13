"""Runs a template as a report inside the notebook container (the worker starts it: workers/reports.py).

    python3 -m nbl_report <template.ipynb> <params.json> <output folder>

Executes the notebook with papermill (the parameters go in a cell after its ``parameters`` cell) with the output
folder as its working directory, and writes there the executed notebook (``notebook.ipynb``), its HTML rendering
(``notebook.html``, also for a failed run: it shows the failing cell) and, when a cell fails, ``error.json``
(the cell's index, its source, the error and its traceback, colours removed). Exit status: 0 succeeded,
1 a cell failed, 2 the runner itself failed.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
MAX_PARAMS_BYTES = 64 * 1024


def _clean(text: str, limit: int) -> str:
    return ANSI.sub("", text)[-limit:]


def run(template: Path, params_file: Path, out: Path) -> int:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    params = json.loads(params_file.read_bytes()[:MAX_PARAMS_BYTES])
    executed = out / "notebook.ipynb"
    status = 0
    print(f"nbl_report: running {template.name} with {len(params)} parameters", flush=True)
    try:
        papermill.execute_notebook(
            str(template),
            str(executed),
            parameters=params,
            kernel_name="python3",
            cwd=str(out),
            progress_bar=False,
            log_output=False,
        )
    except PapermillExecutionError as exc:
        status = 1
        error = {
            "cell": exc.cell_index,
            "execution_count": exc.exec_count,
            "source": _clean(exc.source or "", 4000),
            "ename": _clean(exc.ename or "", 200),
            "evalue": _clean(exc.evalue or "", 2000),
            "traceback": _clean("\n".join(exc.traceback or []), 8000),
        }
        (out / "error.json").write_text(json.dumps(error, indent=2))
        print(f"nbl_report: cell {exc.cell_index} failed: {error['ename']}", flush=True)
    if executed.is_file():
        from nbconvert import HTMLExporter

        body, _ = HTMLExporter().from_filename(str(executed))
        (out / "notebook.html").write_text(body, encoding="utf-8")
    print(f"nbl_report: {'succeeded' if status == 0 else 'failed'}", flush=True)
    return status


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        return run(Path(argv[1]), Path(argv[2]), Path(argv[3]))
    except Exception as exc:  # noqa: BLE001 - reported to the worker through the log and the exit status
        print(f"nbl_report: the runner failed: {type(exc).__name__}: {_clean(str(exc), 500)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
