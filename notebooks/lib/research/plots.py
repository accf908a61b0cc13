"""Figures for notebooks and headless report runs alike."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def show(fig: Figure, path: Path | str | None = None, dpi: int = 100) -> None:
    """Render ``fig`` once as PNG, write it to ``path``, show it in the notebook, and close it.

    The same picture the inline backend would show (``bbox_inches="tight"``), without drawing the
    figure a second time for the file. In a plain Python process it only writes the file.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    png = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(png)
    if _in_kernel():
        from IPython.display import Image, display

        display(Image(data=png, format="png"))
