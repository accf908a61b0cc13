"""What a host's worker does for a report run: run the template in the notebook runtime, keep what it made.

The run's container is the session runtime (``launcher.spec.build_report_spec``) with the papermill runner; its
only writable place is the run's folder, ``<reports_dir>/<user>/<run>/``, which keeps the executed notebook, its
HTML and ``output/results.json``. The worker waits for the container, polling once a second: past
``report_timeout_s``, or with the folder larger than ``report_output_max``, the container is stopped and the run
fails. It then reads what the run made, never through a symlink and bounded in size (the notebook wrote it),
records results, the failing cell and every artifact's sha256 on the run, and removes the container. A
reproduction is compared with the run it reproduces. At most ``report_concurrency`` runs at once per host; a
run that finds no room is retried by the task.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import threading
import time
from pathlib import Path
from typing import Any

from launcher import snapshots
from launcher.adapters.redis_reports import ReportStore
from launcher.errors import Conflict, LauncherError, StartFailed
from launcher.logs import event
from launcher.models import utcnow
from launcher.provenance import build_record, library_version, sha256_file
from launcher.reports import CellError, ReportRun, ReportStatus, compare_runs, template_tolerance
from launcher.settings import Settings, parse_size
from launcher.spec import REPORT_LABEL, build_report_spec, report_container_name
from launcher.validation import resolve_template, safe_child, validate_user_id
from workers import hostfs, pyprefix
from workers.lifecycle import WorkerContext
from workers.provenance import record_json

log = logging.getLogger("launcher.worker")
RESULTS = "output/results.json"
MAX_RESULTS_BYTES = 1 * 2**20
MAX_ERROR_BYTES = 64 * 2**10
MAX_ARTIFACTS = 200
_SLOTS = threading.Lock()
_RUNNING: set[str] = set()


class NoRoom(Exception):
    """This host runs ``report_concurrency`` reports already: try again shortly."""


# -- folders ------------------------------------------------------------------------------------------
def run_folder(settings: Settings, user: str, run_id: str) -> Path:
    """``<reports_dir>/<user>/<run>``: the user's folder 0711 (traversable, not listable), the run's 0700."""
    base = settings.reports_dir
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o711)
    mine = safe_child(base.resolve(), validate_user_id(user))
    mine.mkdir(exist_ok=True)
    os.chmod(mine, 0o711)
    folder = safe_child(mine, run_id)
    return folder


def _prepare(settings: Settings, run: ReportRun, template: Path) -> tuple[Path, Path]:
    """(the run's output folder, owned by the notebook user; its input folder: the template and parameters)."""
    out = run_folder(settings, run.user, run.id)
    if out.is_symlink():
        raise StartFailed("the report's folder could not be prepared", f"{out} is a symlink")
    out.mkdir(mode=0o700, exist_ok=True)
    (out / "output").mkdir(mode=0o700, exist_ok=True)
    for path in (out, out / "output"):
        hostfs.own(path, settings.notebook_uid, settings.notebook_gid)
    # The inputs: root's, readable by the notebook's group only (no other host account reads a run's parameters).
    inputs = hostfs.session_rundir(settings, run.id).with_name(f"report-{run.id}")
    inputs.mkdir(mode=0o750, parents=True, exist_ok=True)
    shutil.copyfile(template, inputs / "template.ipynb", follow_symlinks=False)
    params = dict(run.params) | {"data_root": "/data", "output_dir": "/home/jovyan/work/output"}
    (inputs / "params.json").write_text(json.dumps(params))
    for path, mode in ((inputs, 0o750), (inputs / "template.ipynb", 0o440), (inputs / "params.json", 0o440)):
        hostfs.own(path, 0, settings.notebook_gid)
        os.chmod(path, mode)
    return out, inputs


def _template(ctx: WorkerContext, run: ReportRun) -> tuple[Path, str]:
    """The template file this run runs (its pinned version, or the current one, kept by hash) and its sha256."""
    if run.template_sha256:
        pinned = ctx.settings.template_store_dir / f"{run.template_sha256}.ipynb"
        if pinned.is_symlink() or not pinned.is_file():
            raise StartFailed(f"the template version this run asks for ({run.template_sha256[:12]}) is no longer kept")
        return pinned, run.template_sha256
    current = resolve_template(ctx.settings.templates_dir, run.template)
    sha = sha256_file(current)
    hostfs.keep_template(ctx.settings, run.template, sha)
    return ctx.settings.template_store_dir / f"{sha}.ipynb", sha


# -- reading what the notebook wrote (bounded, no symlinks) --------------------------------------------
def _read_bounded(folder: Path, relative: str, limit: int) -> bytes | None:
    """A regular file below ``folder`` opened without following symlinks, at most ``limit`` bytes; None if
    it is not there, not a regular file, or larger."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for part in relative.split("/")[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        file_fd = os.open(relative.rsplit("/", 1)[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    with os.fdopen(file_fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        data = f.read(limit + 1)
    return data if len(data) <= limit else None


MAX_FOLDER_ENTRIES = 5000  # a run that makes more files and folders than this is stopped


def folder_size(folder: Path, most: int = MAX_FOLDER_ENTRIES) -> tuple[int, int]:
    """(bytes of the regular files, entries seen) below ``folder``, never through a symlink, looking at no more
    than ``most`` + 1 entries."""
    total, seen, stack = 0, 0, [str(folder)]
    while stack and seen < most:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    seen += 1
                    if seen > most:
                        break
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)  # space taken (fallocate) or claimed (sparse)
                        total += max(st.st_size, st.st_blocks * 512)
        except OSError:
            continue
    return total, seen


def artifacts(folder: Path, budget: int) -> dict[str, str]:
    """The regular files the run left (relative path -> sha256): at most ``MAX_ARTIFACTS`` hashed, ``budget`` bytes
    read and ``MAX_FOLDER_ENTRIES`` entries looked at, breadth first; never through a symlink, never a file with
    more than one link (a hard-linked file would be hashed again and again)."""
    found: dict[str, str] = {}
    queue: list[tuple[Path, str]] = [(folder, "")]
    seen = 0
    while queue and len(found) < MAX_ARTIFACTS and seen < MAX_FOLDER_ENTRIES:
        here, prefix = queue.pop(0)
        try:
            with os.scandir(here) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            seen += 1
            if seen > MAX_FOLDER_ENTRIES or len(found) >= MAX_ARTIFACTS:
                break
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and prefix.count("/") < 8:
                queue.append((Path(entry.path), f"{prefix}{entry.name}/"))
            elif stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_size <= budget:
                try:
                    found[prefix + entry.name] = sha256_file(Path(entry.path), limit=budget)
                except OSError:
                    continue
                budget -= st.st_size
    return found


MAX_RESULTS_DEPTH = 20


def _depth(value: Any) -> int:
    """How deeply nested a parsed JSON value is (iteratively: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_RESULTS_DEPTH:
            break
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def _results(out: Path) -> tuple[dict[str, Any], str]:
    raw = _read_bounded(out, RESULTS, MAX_RESULTS_BYTES)
    if raw is None:
        return {}, ""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return {}, f"{RESULTS} is not JSON"
    if not isinstance(data, dict):
        return {}, f"{RESULTS} is not a JSON object"
    if _depth(data) > MAX_RESULTS_DEPTH:
        return {}, f"{RESULTS} is nested more than {MAX_RESULTS_DEPTH} levels deep"
    return data, ""


def _cell_error(out: Path) -> CellError | None:
    raw = _read_bounded(out, "error.json", MAX_ERROR_BYTES)
    if raw is None:
        return None
    try:
        return CellError.model_validate_json(raw)
    except ValueError:
        return None


# -- the run ------------------------------------------------------------------------------------------
def _claim_slot(settings: Settings, run_id: str) -> None:
    with _SLOTS:
        if run_id not in _RUNNING and len(_RUNNING) >= settings.report_concurrency:
            raise NoRoom(run_id)
        _RUNNING.add(run_id)


def _release_slot(run_id: str) -> None:
    with _SLOTS:
        _RUNNING.discard(run_id)


def run(ctx: WorkerContext, reports: ReportStore, run_id: str) -> ReportRun | None:
    """Run a queued report on this host to its end. Raises ``NoRoom`` when this host runs enough already."""
    found = reports.get(run_id)
    if found is None or found.status != ReportStatus.QUEUED or found.host != ctx.settings.host_name:
        event(log, "report.skipped", run_id=run_id, status=found.status.value if found else "unknown")
        return found
    _claim_slot(ctx.settings, run_id)
    try:
        try:
            current = reports.update(run_id, {ReportStatus.QUEUED}, status=ReportStatus.RUNNING, started_at=utcnow())
        except Conflict:
            return reports.get(run_id)
        reports.audit("report_started", current, actor=ctx.settings.host_name)
        return _execute(ctx, reports, current)
    finally:
        _release_slot(run_id)


def _execute(ctx: WorkerContext, reports: ReportStore, run: ReportRun) -> ReportRun:
    settings = ctx.settings
    name = report_container_name(settings, run.id)
    changes: dict[str, Any] = {}
    inputs: Path | None = None
    t0 = time.monotonic()
    try:
        hostfs.check_notebook_identity(settings)
        snapshot, data = snapshots.resolve(settings.data_dir, run.snapshot)
        template, template_sha = _template(ctx, run)
        out, inputs = _prepare(settings, run, template)
        prefix = pyprefix.ready(settings, ctx.runtime, run.image or settings.notebook_image)
        spec = build_report_spec(run, settings, output=out, inputs=inputs, data=data, python_prefix=prefix)
        ctx.runtime.start(spec)
        image_id, labels = ctx.runtime.image_of(name)
        record = build_record(
            run,
            image=run.image or settings.notebook_image,
            image_id=image_id,
            image_labels=labels,
            snapshot=snapshot,
            template_sha256=template_sha,
            library=library_version(settings.library_dir),
            recorded_at=utcnow().isoformat(timespec="seconds"),
        )
        record = {("run" if k == "session" else k): v for k, v in record.items()}
        record["params"] = json.dumps(run.params, sort_keys=True)
        changes.update(record=record, snapshot=snapshot, template_sha256=template_sha)
        code, why = _wait(ctx, name, out)
        results: dict[str, Any] = {}
        if why:  # stopped (too long, too large): what it left is not read
            changes.update(status=ReportStatus.FAILED, error=why)
        else:
            results, problem = _results(out)
            changes.update(results=results, artifacts=artifacts(out, parse_size(settings.report_output_max)))
            changes.update(_outcome(ctx, name, out, code, problem))
        # A reproduction is compared with its original; the template's tolerance decides what is "the same".
        if run.reproduces:
            original = reports.get(run.reproduces)
            if original is not None:
                done = run.model_copy(
                    update={
                        "results": results,
                        "record": record,
                        **{k: v for k, v in changes.items() if k in ("status", "error")},
                    }
                )
                changes["drift"] = compare_runs(original, done, template_tolerance(template))
    except LauncherError as exc:
        changes.update(status=ReportStatus.FAILED, error=exc.user_message)
        event(log, "report.failed", level=logging.WARNING, run_id=run.id, error=exc.log_message)
    except Exception as exc:  # a bug, or something the run left that was not foreseen: the run still ends
        log.exception("report.crashed run_id=%s", run.id)
        changes = {
            "status": ReportStatus.FAILED,
            "error": "the run could not be recorded (internal error)",
            "record": changes.get("record", {}),
        }
        event(log, "report.failed", level=logging.WARNING, run_id=run.id, error=repr(exc)[:300])
    finally:
        try:
            ctx.runtime.stop(name, timeout=0)
        except LauncherError as exc:  # reconcile_reports removes it later
            event(log, "report.cleanup_deferred", level=logging.WARNING, run_id=run.id, error=exc.log_message)
        if inputs is not None:
            shutil.rmtree(inputs, ignore_errors=True)
    changes.setdefault("status", ReportStatus.FAILED)
    changes["finished_at"] = utcnow()
    if changes.get("record"):
        _keep_record(ctx, reports, run, changes)
    ended = reports.update(run.id, {ReportStatus.RUNNING}, **changes)
    if ended.reproduces:
        reports.set_checked(ended.reproduces, ended.id)
    drift = ended.drift
    detail = f"{ended.status.value} in {time.monotonic() - t0:.1f} s"
    if drift is not None:
        detail += f"; {'same as' if drift.same else 'DRIFT from'} {ended.reproduces}"
    reports.audit(
        "report_drift" if drift is not None and not drift.same else "report_ended",
        ended,
        actor=settings.host_name,
        detail=detail,
    )
    event(
        log,
        "report.ended",
        run_id=run.id,
        user=run.user,
        status=ended.status.value,
        seconds=round(time.monotonic() - t0, 2),
    )
    return ended


def _keep_record(ctx: WorkerContext, reports: ReportStore, run: ReportRun, changes: dict[str, Any]) -> None:
    """The record beside the artifacts (``.launcher/<run>.json`` in the run's folder, written once the container is
    gone, never through a symlink) and in the audit trail."""
    text = record_json(changes["record"])
    try:
        path = hostfs.write_record(ctx.settings, run_folder(ctx.settings, run.user, run.id), run.id, text)
        changes["artifacts"] = {**changes.get("artifacts", {}), f"{hostfs.RECORD_DIR}/{path.name}": sha256_file(path)}
    except (OSError, LauncherError) as exc:
        event(log, "report.record_not_written", level=logging.WARNING, run_id=run.id, error=repr(exc)[:200])
    reports.audit("report_provenance", run, actor=ctx.settings.host_name, detail=json.dumps(changes["record"]))


def _outcome(ctx: WorkerContext, name: str, out: Path, code: int | None, problem: str) -> dict[str, Any]:
    """How a run that ended by itself went: succeeded, or failed with the failing cell or the runner's last line."""
    if code == 0:
        return {"status": ReportStatus.FAILED, "error": problem} if problem else {"status": ReportStatus.SUCCEEDED}
    cell = _cell_error(out) if code == 1 else None
    why = (
        f"cell {cell.cell} raised {cell.ename}" if cell else f"the runner exited with status {code}: {_tail(ctx, name)}"
    )
    return {"status": ReportStatus.FAILED, "error": why, "cell_error": cell}


def _tail(ctx: WorkerContext, name: str) -> str:
    try:
        lines = [line for line in ctx.runtime.logs(name, tail=5).splitlines() if line.strip()]
    except LauncherError:
        return ""
    return (lines[-1] if lines else "")[:300]


def _wait(ctx: WorkerContext, name: str, out: Path) -> tuple[int | None, str]:
    """(exit status, "") when the runner ends in time; (None, why) when it was stopped."""
    settings = ctx.settings
    limit = parse_size(settings.report_output_max)
    until = time.monotonic() + settings.report_timeout_s
    while True:
        code = ctx.runtime.wait(name, timeout=1.0)
        if code is not None:
            return code, ""
        size, entries = folder_size(out)
        if size > limit or entries > MAX_FOLDER_ENTRIES:
            ctx.runtime.stop(name, timeout=0)
            what = f"more than {settings.report_output_max}" if size > limit else f"over {MAX_FOLDER_ENTRIES} files"
            return None, f"the run wrote {what} to its folder and was stopped"
        if time.monotonic() > until:
            ctx.runtime.stop(name, timeout=0)
            return None, f"the run took longer than {settings.report_timeout_s:.0f} s and was stopped"


def reconcile(ctx: WorkerContext, reports: ReportStore) -> int:
    """Remove report containers on this host whose run is not running here any more (a worker that died
    mid-run; the deadline sweep fails the run)."""
    removed = 0
    label = f"{REPORT_LABEL}.instance={ctx.settings.instance}"
    containers = ctx.runtime.list_labelled(label)
    present = {c.labels.get(f"{REPORT_LABEL}.run", "") for c in containers}
    for found in reports.open_runs():  # running here, by no thread of this worker, with no container: ended
        with _SLOTS:
            active = found.id in _RUNNING
        here = found.status == ReportStatus.RUNNING and found.host == ctx.settings.host_name
        if here and not active and found.id not in present:
            _fail_orphan(reports, ctx, found.id)
    for c in containers:
        if c.labels.get(f"{REPORT_LABEL}.host") != ctx.settings.host_name:
            continue
        run_id = c.labels.get(f"{REPORT_LABEL}.run", "")
        with _SLOTS:
            active = run_id in _RUNNING
        if active:
            continue
        ctx.runtime.stop(c.name, timeout=0)
        removed += 1
        if run_id:
            _fail_orphan(reports, ctx, run_id)
    return removed


def _fail_orphan(reports: ReportStore, ctx: WorkerContext, run_id: str) -> None:
    found = reports.get(run_id)
    if found is None or found.status != ReportStatus.RUNNING or found.host != ctx.settings.host_name:
        return
    try:
        ended = reports.update(
            run_id,
            {ReportStatus.RUNNING},
            status=ReportStatus.FAILED,
            error="its worker stopped during the run",
            finished_at=utcnow(),
        )
    except Conflict:
        return
    reports.audit("report_failed", ended, actor=ctx.settings.host_name, detail="worker stopped mid-run")
