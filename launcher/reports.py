"""Report runs: a template run unattended with parameters, and what makes it reproducible (issue 13).

Records and pure policy only (no I/O but reading a template file): the run and schedule records, which
parameters a template takes and how a request's values are checked against them, how two runs' results are
compared (exactly, or within the tolerance the template states), and schedule intervals. The store is
``launcher.adapters.redis_reports``, the service ``launcher.report_service``, the container work
``workers.reports``.
"""

from __future__ import annotations

import ast
import json
import math
import re
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from launcher.errors import InvalidRequest
from launcher.models import new_session_id, utcnow

RUN_ID_PATTERN = r"^[a-z0-9]{12}$"
ParamValue = str | bool | int | float
# Set by the launcher for every run: a request may not choose where the data or the outputs are.
RESERVED_PARAMS = frozenset({"data_root", "output_dir"})
MAX_PARAMS = 32
MAX_PARAM_CHARS = 200
DEFAULT_TOLERANCE = 1e-9  # relative, for templates that state none (float sums may differ in the last bits)
MAX_DIFFS = 20  # a comparison lists at most this many differences
_EMPTY_DICT = BeforeValidator(lambda v: {} if v == [] else v)  # cjson writes {} back as []


def new_run_id() -> str:
    return new_session_id()


class ReportStatus(StrEnum):
    QUEUED = "queued"  # recorded, sent to its host's worker
    RUNNING = "running"  # its container runs the notebook
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # a cell raised, the run timed out, or the host could not run it

    @property
    def done(self) -> bool:
        return self in (ReportStatus.SUCCEEDED, ReportStatus.FAILED)


class CellError(BaseModel):
    """The failing cell of a failed run, as papermill reports it (bounded, ANSI colours removed)."""

    model_config = ConfigDict(frozen=True)

    cell: int = -1  # index among the notebook's cells (the parameters papermill injects included)
    execution_count: int | None = None
    source: str = ""
    ename: str = ""
    evalue: str = ""
    traceback: str = ""


class Drift(BaseModel):
    """A re-run compared with the run it reproduces."""

    model_config = ConfigDict(frozen=True)

    same: bool
    tolerance: float
    differences: list[str] = Field(default_factory=list)  # "path: original -> now", at most MAX_DIFFS
    environment: list[str] = Field(default_factory=list)  # record fields that differ (image, library...)


class ReportRun(BaseModel):
    """One unattended run of a template; stored as JSON in Redis by ``launcher.adapters.redis_reports``."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(pattern=RUN_ID_PATTERN)
    user: str
    template: str
    params: dict[str, ParamValue] = Field(default_factory=dict)
    status: ReportStatus = ReportStatus.QUEUED
    host: str = ""
    requested_by: str = ""  # who asked: the user, an admin, "schedule:<id>", "check"
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Pinned at request for a reproduction (from the record of the run it reproduces), else "": the current ones.
    image: str = Field("", pattern=r"^(|sha256:[0-9a-f]{64})$")
    template_sha256: str = Field("", pattern=r"^(|[0-9a-f]{64})$")
    snapshot: str = Field("", pattern=r"^(|legacy|[0-9a-f]{16})$")
    profile: str = "standard"
    cpus: float = 2.0
    mem_bytes: int = 4 * 2**30
    pids_limit: int = 512
    reproduces: str = ""  # the run this one re-runs ("launcher reproduce", the scheduled check)
    schedule: str = ""  # the schedule that started it
    record: Annotated[dict[str, str], _EMPTY_DICT] = Field(default_factory=dict)  # launcher.provenance
    results: Annotated[dict[str, Any], _EMPTY_DICT] = Field(default_factory=dict)  # its results.json
    artifacts: Annotated[dict[str, str], _EMPTY_DICT] = Field(default_factory=dict)  # relative path -> sha256
    error: str = ""  # why it failed, for people
    cell_error: CellError | None = None
    drift: Drift | None = None  # a reproduction: how it compares with the original
    checked: str = ""  # an original: its latest reproduction's id

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def to_storage(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_storage(cls, raw: str | bytes) -> ReportRun:
        return cls.model_validate_json(raw)


class ReportSchedule(BaseModel):
    """A template a user runs as a report every ``every_s`` seconds."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(pattern=RUN_ID_PATTERN)
    user: str
    template: str
    params: dict[str, ParamValue] = Field(default_factory=dict)
    every_s: float = Field(gt=0)
    created_at: datetime = Field(default_factory=utcnow)
    last_run: str = ""

    def to_storage(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_storage(cls, raw: str | bytes) -> ReportSchedule:
        return cls.model_validate_json(raw)


# -- a template's parameters ------------------------------------------------------------------------


def _notebook(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"the template {path.stem!r} cannot be read", f"template {path}: {exc!r}") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"the template {path.stem!r} is not a notebook")
    return data


def template_parameters(path: Path) -> dict[str, ParamValue]:
    """The defaults of the template's ``parameters`` cell (papermill's convention): ``name = literal`` lines."""
    for cell in _notebook(path).get("cells", []):
        tags = (cell.get("metadata") or {}).get("tags") or []
        if cell.get("cell_type") != "code" or "parameters" not in tags:
            continue
        source = cell.get("source", "")
        text = "".join(source) if isinstance(source, list) else str(source)
        found: dict[str, ParamValue] = {}
        for node in ast.parse(text).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                try:
                    value = ast.literal_eval(node.value)
                except ValueError:
                    continue
                if isinstance(value, str | bool | int | float):
                    found[node.targets[0].id] = value
        return found
    return {}


def template_tolerance(path: Path) -> float:
    """The relative tolerance the template states for comparing results (``metadata.launcher.tolerance``)."""
    meta = (_notebook(path).get("metadata") or {}).get("launcher") or {}
    try:
        value = float(meta.get("tolerance", DEFAULT_TOLERANCE))
    except (TypeError, ValueError):
        return DEFAULT_TOLERANCE
    return value if math.isfinite(value) and 0 <= value < 1 else DEFAULT_TOLERANCE


def coerce_param(name: str, raw: object, default: ParamValue) -> ParamValue:
    """A requested value as the type of the template's default (text from a form or a CLI is parsed)."""
    if isinstance(raw, str) and len(raw) > MAX_PARAM_CHARS:
        raise InvalidRequest(f"parameter {name!r} is longer than {MAX_PARAM_CHARS} characters")
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in {"true", "false", "1", "0", "yes", "no"}:
            return raw.lower() in {"true", "1", "yes"}
        raise InvalidRequest(f"parameter {name!r} takes true or false")
    if isinstance(default, int):
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and re.fullmatch(r"-?[0-9]{1,15}", raw.strip()):
            return int(raw)
        raise InvalidRequest(f"parameter {name!r} takes a whole number")
    if isinstance(default, float):
        try:
            value = float(raw) if isinstance(raw, int | float | str) and not isinstance(raw, bool) else math.nan
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise InvalidRequest(f"parameter {name!r} takes a number")
        return value
    if not isinstance(raw, str) or "\0" in raw or any(ord(c) < 32 for c in raw):
        raise InvalidRequest(f"parameter {name!r} takes one line of text")
    return raw


def validate_params(requested: dict[str, object], declared: dict[str, ParamValue]) -> dict[str, ParamValue]:
    """The requested parameters, checked against the template's: known names, the defaults' types, bounded."""
    if len(requested) > MAX_PARAMS:
        raise InvalidRequest(f"at most {MAX_PARAMS} parameters")
    checked: dict[str, ParamValue] = {}
    for name, raw in requested.items():
        if name in RESERVED_PARAMS:
            raise InvalidRequest(f"parameter {name!r} is set by the launcher")
        if name not in declared:
            known = ", ".join(sorted(set(declared) - RESERVED_PARAMS)) or "none"
            raise InvalidRequest(f"the template has no parameter {str(name)[:40]!r} (it takes: {known})")
        checked[name] = coerce_param(name, raw, declared[name])
    return checked


def parse_param_args(pairs: list[str]) -> dict[str, object]:
    """``name=value`` pairs (the CLI's ``-p``) as a dict of text values."""
    out: dict[str, object] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,40}", name):
            raise InvalidRequest(f"invalid parameter {pair[:40]!r}: use name=value")
        out[name] = value
    return out


# -- schedules ------------------------------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_interval(text: str) -> float:
    """``15m``, ``6h``, ``1d``, ``1w`` or plain seconds."""
    match = re.fullmatch(r"\s*([0-9]{1,7})\s*([smhdw]?)\s*", text.lower())
    if match is None or int(match.group(1)) == 0:
        raise InvalidRequest(f"invalid interval {text[:20]!r}: use a number with s, m, h, d or w (e.g. 1d)")
    return float(int(match.group(1)) * _UNITS[match.group(2) or "s"])


def describe_interval(seconds: float) -> str:
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"every {int(seconds // size)}{unit}"
    return f"every {seconds:g}s"


# -- comparing results ----------------------------------------------------------------------------------


def _close(a: float, b: float, tolerance: float) -> bool:
    return math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance * 1e-3)


def compare_results(original: Any, now: Any, tolerance: float, path: str = "") -> list[str]:
    """Where two results differ: numbers beyond the relative ``tolerance`` (0: exactly), anything else exactly."""
    where = path or "results"
    if isinstance(original, dict) and isinstance(now, dict):
        diffs: list[str] = []
        for key in sorted(set(original) | set(now), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in now:
                diffs.append(f"{sub}: missing now")
            elif key not in original:
                diffs.append(f"{sub}: new")
            else:
                diffs.extend(compare_results(original[key], now[key], tolerance, sub))
        return diffs
    if isinstance(original, list) and isinstance(now, list):
        if len(original) != len(now):
            return [f"{where}: {len(original)} items -> {len(now)}"]
        return [
            d
            for i, (a, b) in enumerate(zip(original, now, strict=True))
            for d in compare_results(a, b, tolerance, f"{where}[{i}]")
        ]
    numbers = (int, float)
    if (
        isinstance(original, numbers)
        and isinstance(now, numbers)
        and not isinstance(original, bool)
        and not isinstance(now, bool)
    ):
        both_nan = math.isnan(float(original)) and math.isnan(float(now))
        same = both_nan or (original == now if tolerance == 0 else _close(float(original), float(now), tolerance))
        return [] if same else [f"{where}: {original!r} -> {now!r}"]
    return [] if original == now else [f"{where}: {str(original)[:60]!r} -> {str(now)[:60]!r}"]


# The record fields that make a run what it is: a difference in one of them explains a drift.
ENVIRONMENT_FIELDS = ("image_id", "lock_sha256", "snapshot", "template_sha256", "library_version", "profile")


def compare_runs(original: ReportRun, rerun: ReportRun, tolerance: float) -> Drift:
    differences = compare_results(original.results, rerun.results, tolerance)
    environment = [
        f"{name}: {original.record.get(name, '')[:24]} -> {rerun.record.get(name, '')[:24]}"
        for name in ENVIRONMENT_FIELDS
        if original.record.get(name, "") != rerun.record.get(name, "")
    ]
    if rerun.status != ReportStatus.SUCCEEDED:
        differences = [f"the re-run {rerun.status.value}: {rerun.error[:120]}", *differences]
    return Drift(
        same=not differences, tolerance=tolerance, differences=differences[:MAX_DIFFS], environment=environment
    )
