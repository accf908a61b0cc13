"""Build notebooks/templates/<name>.ipynb from notebooks/src/<name>.py (``# %%`` cells).

    python notebooks/build_templates.py          write the notebooks
    python notebooks/build_templates.py --check  exit 1 when a notebook is out of date (a test runs this)

A cell starts with ``# %%``; ``# %% [markdown]`` cells hold ``# ``-prefixed markdown; ``# %% parameters``
marks papermill's parameters cell. The module docstring's first lines give the card's title,
description and data (``Title:``, ``Description:``, ``Data:``), and ``Tolerance:`` the relative difference
within which a re-run's ``results.json`` counts as the same (``launcher reproduce``).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build(src: Path) -> str:
    text = src.read_text()
    meta = dict(re.findall(r"^# (Title|Description|Data|Tolerance): (.+)$", text, flags=re.M))
    cells = []
    for i, chunk in enumerate(re.split(r"^# %%", text, flags=re.M)[1:]):
        header, _, body = chunk.partition("\n")
        body = body.strip("\n")
        if "[markdown]" in header:
            source = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.splitlines())
            cells.append({"id": f"c{i}", "cell_type": "markdown", "metadata": {}, "source": source.splitlines(True)})
        else:
            tags = ["parameters"] if "parameters" in header else []
            cells.append(
                {
                    "id": f"c{i}",
                    "cell_type": "code",
                    "metadata": {"tags": tags} if tags else {},
                    "execution_count": None,
                    "outputs": [],
                    "source": body.splitlines(True),
                }
            )
    nb = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
            "launcher": {
                "title": meta.get("Title", src.stem),
                "description": meta.get("Description", ""),
                "data": meta.get("Data", ""),
                **({"tolerance": float(meta["Tolerance"])} if "Tolerance" in meta else {}),
            },
        },
        "cells": cells,
    }
    return json.dumps(nb, indent=1) + "\n"


def main() -> int:
    stale = []
    for src in sorted((HERE / "src").glob("*.py")):
        target = HERE / "templates" / f"{src.stem}.ipynb"
        built = build(src)
        if "--check" in sys.argv:
            if not target.exists() or target.read_text() != built:
                stale.append(target.name)
        else:
            target.write_text(built)
    if stale:
        print(f"out of date (run python notebooks/build_templates.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
