"""structlog-style event lines on the standard library: ``event key=value ...``.

Callers pass ids and figures, never a Session object or a token.
"""

from __future__ import annotations

import logging
from typing import Any


def _fmt(value: Any) -> str:
    text = str(value)
    return f'"{text}"' if (" " in text or not text) else text


def event(logger: logging.Logger, name: str, /, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, "%s %s", name, " ".join(f"{k}={_fmt(v)}" for k, v in fields.items()))
