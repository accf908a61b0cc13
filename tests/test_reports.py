"""Report runs without Docker: the pure policy (parameters, comparison, intervals) and the service and store
against a real Redis: bad input is refused and records nothing, schedules start once, no run stays stuck."""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from launcher.adapters.redis_reports import ReportStore
from launcher.adapters.redis_store import SessionStore
from launcher.errors import InvalidRequest, NotFound, PermissionDenied, RuntimeUnavailable
from launcher.models import Actor, Role, utcnow
from launcher.report_service import ReportService
from launcher.reports import (
    ReportRun,
    ReportStatus,
    compare_results,
    compare_runs,
    parse_interval,
    parse_param_args,
    template_parameters,
    template_tolerance,
    validate_params,
)
from tests.helpers import register_hosts

TEMPLATES = Path(__file__).resolve().parent.parent / "notebooks" / "templates"
ANN = Actor(name="ann", role=Role.RESEARCHER)
BOB = Actor(name="bob", role=Role.RESEARCHER)
ADMIN = Actor(name="rep-admin", role=Role.ADMIN)
VIEWER = Actor(name="vic", role=Role.VIEWER)


class Sent:
    def __init__(self) -> None:
        self.runs: list[tuple[str, str]] = []
        self.fail = False

    def run_report(self, run_id: str, host: str) -> None:
        if self.fail:
            raise RuntimeUnavailable("the task queue (Redis) is not reachable; try again shortly")
        self.runs.append((run_id, host))


@pytest.fixture
def rsvc(unit_settings, redis_url):
    settings = unit_settings.model_copy(update={"redis_url": redis_url, "report_schedule_min_s": 60.0})
    sessions = SessionStore(redis.Redis.from_url(redis_url, decode_responses=True), settings)
    register_hosts(sessions, settings.host_name)
    return ReportService(settings, ReportStore(sessions, keep_per_user=5), sessions, Sent())


def report_keys(svc: ReportService) -> list[str]:
    prefix = svc.store.sessions.prefix
    return sorted(k for k in svc.store.sessions.redis.keys(prefix + "*") if "report" in k or "schedule" in k)


# -- pure policy ------------------------------------------------------------------------------------------
def test_every_template_declares_its_parameters_and_a_tolerance() -> None:
    for name in ("alpha_research", "factor_analysis", "backtest_review"):
        params = template_parameters(TEMPLATES / f"{name}.ipynb")
        assert {"data_root", "output_dir", "start", "end", "fast"} <= set(params), name
        assert params["fast"] is False and isinstance(params["seed"], int)
        assert 0 < template_tolerance(TEMPLATES / f"{name}.ipynb") < 1e-3


@pytest.mark.parametrize(
    ("requested", "message"),
    [
        ({"output_dir": "/etc"}, "set by the launcher"),
        ({"data_root": "/"}, "set by the launcher"),
        ({"nope": "1"}, "has no parameter 'nope'"),
        ({"seed": "seven"}, "whole number"),
        ({"seed": True}, "whole number"),
        ({"fast": "maybe"}, "true or false"),
        ({"start": "x" * 201}, "longer than 200"),
        ({"start": "2020\n01"}, "one line of text"),
        ({"start": 5}, "one line of text"),
    ],
)
def test_parameters_are_checked_against_the_template(requested, message) -> None:
    declared = template_parameters(TEMPLATES / "alpha_research.ipynb")
    with pytest.raises(InvalidRequest, match=message):
        validate_params(requested, declared)


def test_parameters_from_text_take_the_defaults_types() -> None:
    declared = template_parameters(TEMPLATES / "alpha_research.ipynb")
    got = validate_params(parse_param_args(["seed=11", "fast=true", "start=2023-01-02"]), declared)
    assert got == {"seed": 11, "fast": True, "start": "2023-01-02"}
    with pytest.raises(InvalidRequest, match="name=value"):
        parse_param_args(["../x=1"])


def test_results_compare_exactly_or_within_the_tolerance() -> None:
    a = {"ic": {"mean": 0.0123456789, "t": 2.5}, "n": 10, "names": ["x", "y"], "nan": float("nan")}
    assert compare_results(a, a, 0.0) == []
    b = {"ic": {"mean": 0.0123456789 * (1 + 1e-12), "t": 2.5}, "n": 10, "names": ["x", "y"], "nan": float("nan")}
    assert compare_results(a, b, 1e-9) == []
    assert compare_results(a, b, 0.0) == [f"ic.mean: {a['ic']['mean']!r} -> {b['ic']['mean']!r}"]
    c = {"ic": {"mean": 0.02}, "n": 11, "names": ["x"], "extra": 1}
    diffs = compare_results(a, c, 1e-9)
    assert "ic.t: missing now" in diffs and "extra: new" in diffs and "names: 2 items -> 1" in diffs
    assert any(d.startswith("n: 10 -> 11") for d in diffs) and any(d.startswith("ic.mean") for d in diffs)


def test_a_drift_names_what_changed_in_the_environment() -> None:
    base = ReportRun(
        id="a" * 12,
        user="ann",
        template="t",
        status=ReportStatus.SUCCEEDED,
        results={"x": 1.0},
        record={"snapshot": "1" * 16, "image_id": "sha256:" + "0" * 64},
    )
    same = base.model_copy(update={"id": "b" * 12})
    assert compare_runs(base, same, 1e-9).same
    moved = same.model_copy(update={"results": {"x": 1.1}, "record": {**base.record, "snapshot": "2" * 16}})
    drift = compare_runs(base, moved, 1e-9)
    assert not drift.same and drift.differences == ["x: 1.0 -> 1.1"]
    assert drift.environment == [f"snapshot: {'1' * 16} -> {'2' * 16}"]


@pytest.mark.parametrize(("text", "seconds"), [("15m", 900), ("6h", 21600), ("1d", 86400), ("1w", 604800), ("90", 90)])
def test_intervals(text, seconds) -> None:
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "1y", "-1h", "1.5h", "9999999999"])
def test_bad_intervals(text) -> None:
    with pytest.raises(InvalidRequest, match="invalid interval"):
        parse_interval(text)


# -- the service ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("actor", "kwargs", "error", "message"),
    [
        (ANN, {"template": "no_such_template"}, InvalidRequest, "unknown template"),
        (ANN, {"template": "../alpha_research"}, InvalidRequest, "invalid template name"),
        (ANN, {"template": "alpha_research", "user": "../x"}, InvalidRequest, "invalid user id"),
        (ANN, {"template": "alpha_research", "params": {"output_dir": "/etc"}}, InvalidRequest, "set by the launcher"),
        (ANN, {"template": "alpha_research", "snapshot": "../../x"}, InvalidRequest, "invalid data snapshot"),
        (ANN, {"template": "alpha_research", "user": "bob"}, PermissionDenied, "may not run reports for bob"),
        (VIEWER, {"template": "alpha_research"}, PermissionDenied, "lacks"),
    ],
)
def test_bad_requests_are_refused_and_record_nothing(rsvc, actor, kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        rsvc.run(actor, **kwargs)
    assert report_keys(rsvc) == [] and rsvc.dispatcher.runs == []


def test_a_run_is_recorded_queued_on_an_up_host_and_sent_there(rsvc) -> None:
    run = rsvc.run(ANN, "alpha_research", {"fast": "true", "seed": "3"})
    assert run.status == ReportStatus.QUEUED and run.host == rsvc.settings.host_name
    assert run.params == {"fast": True, "seed": 3} and run.requested_by == "ann"
    assert rsvc.dispatcher.runs == [(run.id, rsvc.settings.host_name)]
    assert [r.id for r in rsvc.runs(ANN)] == [run.id] and rsvc.runs(BOB) == []
    with pytest.raises(NotFound):
        rsvc.get(BOB, run.id)  # another researcher's run does not exist for them
    assert rsvc.get(ADMIN, run.id).id == run.id
    with pytest.raises(PermissionDenied):
        rsvc.runs(ANN, everyone=True)
    assert [e.action for e in rsvc.store.sessions.audit(limit=5)][0] == "report_requested"


def test_no_host_up_refuses_and_records_nothing(rsvc) -> None:
    rsvc.store.sessions.set_draining(rsvc.settings.host_name, True)
    with pytest.raises(RuntimeUnavailable, match="no Docker host is up"):
        rsvc.run(ANN, "alpha_research")
    assert report_keys(rsvc) == []


def test_a_run_that_cannot_be_sent_ends_failed(rsvc) -> None:
    rsvc.dispatcher.fail = True
    with pytest.raises(RuntimeUnavailable):
        rsvc.run(ANN, "alpha_research")
    (run,) = rsvc.runs(ANN)
    assert run.status == ReportStatus.FAILED and "not reachable" in run.error
    assert rsvc.store.open_runs() == []


def test_reproduce_needs_a_succeeded_run_with_a_record_and_pins_it(rsvc) -> None:
    run = rsvc.run(ANN, "alpha_research", {"seed": "5"})
    with pytest.raises(InvalidRequest, match="nothing to reproduce"):
        rsvc.reproduce(ANN, run.id)
    record = {"image_id": "sha256:" + "a" * 64, "template_sha256": "b" * 64, "snapshot": "c" * 16}
    rsvc.store.update(run.id, {ReportStatus.QUEUED}, status=ReportStatus.SUCCEEDED, record=record)
    with pytest.raises(NotFound):
        rsvc.reproduce(BOB, run.id)
    again = rsvc.reproduce(ANN, run.id)
    assert (again.image, again.template_sha256, again.snapshot) == ("sha256:" + "a" * 64, "b" * 64, "c" * 16)
    assert again.params == {"seed": 5} and again.reproduces == run.id and again.user == "ann"
    assert (again.profile, again.cpus, again.mem_bytes) == (run.profile, run.cpus, run.mem_bytes)


def test_a_run_ends_once(rsvc) -> None:
    run = rsvc.run(ANN, "alpha_research")
    rsvc.store.update(run.id, {ReportStatus.QUEUED}, status=ReportStatus.RUNNING)
    rsvc.store.update(run.id, {ReportStatus.RUNNING}, status=ReportStatus.SUCCEEDED)
    from launcher.errors import Conflict

    with pytest.raises(Conflict):
        rsvc.store.update(run.id, {ReportStatus.RUNNING}, status=ReportStatus.FAILED)
    assert rsvc.store.get(run.id).status == ReportStatus.SUCCEEDED


def test_old_runs_are_pruned_beyond_the_keep(rsvc) -> None:
    ids = []
    for _ in range(7):
        run = rsvc.run(ANN, "alpha_research")
        rsvc.store.update(run.id, {ReportStatus.QUEUED}, status=ReportStatus.FAILED)
        ids.append(run.id)
    kept = [r.id for r in rsvc.runs(ANN)]
    assert kept == list(reversed(ids))[:5] and rsvc.store.get(ids[0]) is None


def test_schedules_start_once_per_due_time_and_stop_when_removed(rsvc) -> None:
    with pytest.raises(InvalidRequest, match="at most every 1m"):
        rsvc.add_schedule(ANN, "alpha_research", "30s")
    with pytest.raises(InvalidRequest, match="unknown template"):
        rsvc.add_schedule(ANN, "nope", "1h")
    schedule = rsvc.add_schedule(ANN, "alpha_research", "1h", {"fast": "1"})
    assert rsvc.run_due() == []  # not due for an hour
    rsvc.store.sessions.redis.zadd(rsvc.store._k("schedules"), {schedule.id: time.time() - 1})
    started = rsvc.run_due()
    assert len(started) == 1 and started[0].schedule == schedule.id and started[0].params == {"fast": True}
    assert started[0].requested_by == f"schedule:{schedule.id}"
    assert rsvc.run_due() == []  # moved on an hour: a second tick starts nothing
    ((mine, due),) = rsvc.schedules(ANN)
    assert mine.last_run == started[0].id and due > time.time() + 3500
    with pytest.raises(NotFound):
        rsvc.remove_schedule(BOB, schedule.id)
    rsvc.remove_schedule(ANN, schedule.id)
    assert rsvc.schedules(ANN) == []


def test_the_sweep_moves_runs_off_a_down_host_and_fails_old_ones(rsvc) -> None:
    sessions = rsvc.store.sessions
    register_hosts(sessions, "other")
    stuck = rsvc.run(ANN, "alpha_research")
    sessions.set_draining(stuck.host, True)
    assert rsvc.sweep() == {"moved": 1, "failed": 0}
    moved = rsvc.store.get(stuck.id)
    assert moved.host != stuck.host and rsvc.dispatcher.runs[-1] == (stuck.id, moved.host)
    old = rsvc.run(BOB, "alpha_research")
    rsvc.store.update(old.id, {ReportStatus.QUEUED}, created_at=utcnow() - timedelta(hours=2))
    running = rsvc.run(ANN, "factor_analysis")
    rsvc.store.update(
        running.id,
        {ReportStatus.QUEUED},
        status=ReportStatus.RUNNING,
        started_at=utcnow() - timedelta(seconds=rsvc.settings.report_timeout_s + 120),
    )
    assert rsvc.sweep()["failed"] == 2
    assert "not started within" in rsvc.store.get(old.id).error
    assert "stopped reporting" in rsvc.store.get(running.id).error
    assert {r.id for r in rsvc.store.open_runs()} == {stuck.id}


def test_the_reproducibility_check_samples_unchecked_successful_runs(rsvc) -> None:
    record = {"image_id": "sha256:" + "a" * 64, "template_sha256": "b" * 64, "snapshot": "c" * 16}
    done = []
    for actor in (ANN, BOB, ANN):
        run = rsvc.run(actor, "alpha_research")
        rsvc.store.update(run.id, {ReportStatus.QUEUED}, status=ReportStatus.SUCCEEDED, record=record)
        done.append(run.id)
    failed = rsvc.run(ANN, "alpha_research")
    rsvc.store.update(failed.id, {ReportStatus.QUEUED}, status=ReportStatus.FAILED, record=record)
    first = rsvc.check_sample(random.Random(1))
    assert len(first) == 2 and {r.reproduces for r in first} < set(done)
    for rerun in first:
        rsvc.store.set_checked(rerun.reproduces, rerun.id)
    second = rsvc.check_sample(random.Random(1))
    assert [r.reproduces for r in second] == sorted(set(done) - {r.reproduces for r in first})


def test_kept_runs_keep_the_images_and_snapshots_they_name(rsvc) -> None:
    """Pruning images or snapshots keeps what a kept run's record names: ``launcher reproduce`` needs them."""
    from launcher import images, snapshots

    run = rsvc.run(ANN, "alpha_research")
    record = {"image_id": "sha256:" + "d" * 64, "template_sha256": "e" * 64, "snapshot": "f" * 16}
    rsvc.store.update(run.id, {ReportStatus.QUEUED}, status=ReportStatus.SUCCEEDED, record=record, snapshot="f" * 16)
    assert "sha256:" + "d" * 64 in images.referenced_by_records(rsvc.settings)
    assert "f" * 16 in snapshots._referenced_by_records(rsvc.settings)


def test_a_user_has_at_most_so_many_open_runs_and_schedules(rsvc) -> None:
    from launcher.errors import LimitReached

    settings = rsvc.settings.model_copy(update={"report_max_open_per_user": 2, "report_max_schedules_per_user": 1})
    svc = ReportService(settings, rsvc.store, rsvc.sessions, rsvc.dispatcher)
    first = svc.run(ANN, "alpha_research")
    svc.run(ANN, "alpha_research")
    with pytest.raises(LimitReached, match="2 report runs queued or running"):
        svc.run(ANN, "factor_analysis")
    assert len(svc.runs(ANN)) == 2 and svc.run(BOB, "alpha_research")  # others are not held up
    svc.store.update(first.id, {ReportStatus.QUEUED}, status=ReportStatus.FAILED)
    svc.run(ANN, "alpha_research")  # one ended: room again
    svc.add_schedule(ANN, "alpha_research", "1h")
    with pytest.raises(LimitReached, match="1 schedules already"):
        svc.add_schedule(ANN, "factor_analysis", "1d")


# -- what the worker reads from a run's folder (the run wrote it), found by review --------------------------
def test_the_worker_reads_a_run_folder_within_bounds(tmp_path: Path) -> None:
    from workers import reports as worker

    out = tmp_path / "run"
    (out / "output").mkdir(parents=True)
    (out / "notebook.html").write_text("<html>")
    (out / "big.bin").write_bytes(b"x" * 5000)
    os.link(out / "big.bin", out / "again.bin")  # hard links: hashed never (each would be read again)
    (out / "link").symlink_to("/etc/passwd")
    found = worker.artifacts(out, budget=4096)
    assert found == {"notebook.html": hashlib.sha256(b"<html>").hexdigest()}
    # Results nested deeper than the limit are refused, without recursion.
    deep: object = 1
    for _ in range(300):
        deep = [deep]
    (out / "output" / "results.json").write_text(json.dumps({"x": deep}))
    assert worker._results(out) == ({}, "output/results.json is nested more than 20 levels deep")
    (out / "output" / "results.json").write_text('{"a": {"b": [1, 2]}}')
    assert worker._results(out) == ({"a": {"b": [1, 2]}}, "")
    # Space taken counts, not only the apparent size (fallocate, sparse files).
    with open(out / "taken.bin", "wb") as f:
        os.posix_fallocate(f.fileno(), 0, 8 * 2**20)
    assert worker.folder_size(out)[0] >= 8 * 2**20


def test_one_unreadable_run_hides_only_itself(rsvc) -> None:
    good = rsvc.run(ANN, "alpha_research")
    bad = rsvc.run(ANN, "factor_analysis")
    key = rsvc.store._k("report", bad.id)
    rsvc.store.sessions.redis.set(key, '{"id": "broken"}')  # unreadable (as a record nested too deep would be)
    assert [r.id for r in rsvc.runs(ANN)] == [good.id]
    assert [r.id for r in rsvc.store.list_all()] == [good.id]


def test_what_a_notebook_wrote_reaches_a_terminal_without_control_characters(capsys) -> None:
    from launcher.report_cli import say

    say("cell 3 raised \x1b]52;c;b3duZWQ=\x07Error\x1b[2K\x9b done\tok\n")
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "\x07" not in printed and "\x9b" not in printed
    assert printed.startswith("cell 3 raised ?]52;c;b3duZWQ=?Error?[2K? done\tok")
