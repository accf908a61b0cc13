"""``launcher report ...`` and ``launcher reproduce``: report runs from the operator CLI (launcher.cli).

Exit codes beside the error tree's: 8 a run failed (its failing cell is printed), 10 a reproduction drifted
from the run it reproduces (the differences are printed).
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime

from launcher.bootstrap import build_report_service
from launcher.models import Actor
from launcher.reports import ReportRun, ReportStatus, describe_interval, parse_param_args
from launcher.settings import Settings

EXIT_FAILED = 8
EXIT_DRIFT = 10
# What a notebook wrote reaches an operator's terminal: no control character but newline and tab gets there
# (escape sequences could retitle, rewrite lines, or write the clipboard).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def say(text: str) -> None:
    print(_CONTROL.sub("?", text))


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = sub.add_parser("report", help="run templates as reports: run, list, show, compare, schedules")
    rsub = report.add_subparsers(dest="report_command", required=True)
    run = rsub.add_parser("run", help="run a template unattended for a user")
    run.add_argument("--user", required=True)
    run.add_argument("--template", required=True)
    run.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    run.add_argument("--snapshot", default="", help="the data snapshot (default: the current one)")
    run.add_argument("--wait", action="store_true", help="wait until it ends; exit 8 if it failed")
    run.add_argument("--timeout", type=float, default=1800.0)
    run.add_argument("--json", action="store_true")
    listing = rsub.add_parser("list", help="runs, newest first (one user's, or everyone's)")
    listing.add_argument("--user")
    listing.add_argument("--json", action="store_true")
    show = rsub.add_parser("show", help="one run: record, results, artifacts, failing cell, drift")
    show.add_argument("run")
    show.add_argument("--json", action="store_true")
    compare = rsub.add_parser("compare", help="where two runs' results differ")
    compare.add_argument("first")
    compare.add_argument("second")
    schedule = rsub.add_parser("schedule", help="run a template for a user on a schedule")
    schedule.add_argument("--user", required=True)
    schedule.add_argument("--template", required=True)
    schedule.add_argument("--every", required=True, help="15m, 6h, 1d, 1w (at least LAUNCHER_REPORT_SCHEDULE_MIN_S)")
    schedule.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    rsub.add_parser("schedules", help="every schedule, soonest first")
    unschedule = rsub.add_parser("unschedule", help="remove a schedule")
    unschedule.add_argument("schedule")
    reproduce = sub.add_parser("reproduce", help="re-run a report from its record and compare its results")
    reproduce.add_argument("run")
    reproduce.add_argument("--timeout", type=float, default=1800.0)
    reproduce.add_argument("--no-wait", action="store_true", help="start it and return")
    reproduce.add_argument("--json", action="store_true")


def row(run: ReportRun) -> str:
    took = f"{run.duration_s:.1f} s" if run.duration_s is not None else "-"
    params = " ".join(f"{k}={v}" for k, v in sorted(run.params.items())) or "-"
    extra = ""
    if run.drift is not None:
        extra = f"  reproduces {run.reproduces}: {'same' if run.drift.same else 'DRIFT'}"
    return f"{run.id}  {run.user:<16} {run.template:<16} {run.status.value:<9} {took:>8}  {params}{extra}"


def _details(run: ReportRun) -> None:
    say(row(run))
    say(f"  requested by {run.requested_by} at {run.created_at:%Y-%m-%d %H:%M:%S} on host {run.host or '-'}")
    if run.error:
        say(f"  error: {run.error}")
    if run.cell_error is not None:
        cell = run.cell_error
        say(f"  failing cell {cell.cell}: {cell.ename}: {cell.evalue}")
        for line in cell.source.splitlines()[-8:]:
            say(f"    | {line}")
    for key, value in run.record.items():
        say(f"  record {key}: {value}")
    for path, sha in run.artifacts.items():
        say(f"  artifact {path} sha256:{sha[:16]}")
    if run.results:
        say(f"  results: {', '.join(sorted(run.results))[:300]}")
    if run.drift is not None:
        _print_drift(run)


def _print_drift(run: ReportRun) -> None:
    drift = run.drift
    assert drift is not None
    verdict = "the same" if drift.same else "DRIFT"
    say(f"  compared with {run.reproduces} (relative tolerance {drift.tolerance:g}): {verdict}")
    for line in drift.differences:
        say(f"    differs: {line}")
    for line in drift.environment:
        say(f"    environment: {line}")


def _emit(run: ReportRun, as_json: bool) -> None:
    if as_json:
        print(json.dumps(run.model_dump(mode="json"), indent=2))
    else:
        _details(run)


def run(args: argparse.Namespace, settings: Settings, actor: Actor) -> int:
    service = build_report_service(settings)
    if args.command == "reproduce":
        rerun = service.reproduce(actor, args.run)
        if args.no_wait:
            _emit(rerun, args.json)
            return 0
        rerun = service.wait(actor, rerun.id, args.timeout)
        _emit(rerun, args.json)
        if rerun.status != ReportStatus.SUCCEEDED:
            return EXIT_FAILED
        return 0 if rerun.drift is not None and rerun.drift.same else EXIT_DRIFT
    command = args.report_command
    if command == "run":
        started = service.run(
            actor, args.template, parse_param_args(args.param), user=args.user, snapshot=args.snapshot
        )
        if args.wait:
            started = service.wait(actor, started.id, args.timeout)
        _emit(started, args.json)
        return EXIT_FAILED if started.status == ReportStatus.FAILED else 0
    if command == "list":
        runs = service.runs(actor, args.user, everyone=args.user is None)
        if args.json:
            print(json.dumps([r.model_dump(mode="json") for r in runs], indent=2))
        else:
            say("\n".join(row(r) for r in runs) or "no report runs")
    elif command == "show":
        _emit(service.get(actor, args.run), args.json)
    elif command == "compare":
        differences = service.compare(actor, args.first, args.second)
        say("\n".join(differences) or "the results are the same")
        return 0 if not differences else EXIT_DRIFT
    elif command == "schedule":
        made = service.add_schedule(actor, args.template, args.every, parse_param_args(args.param), user=args.user)
        say(f"{made.id}  {made.user} {made.template} {describe_interval(made.every_s)}")
    elif command == "schedules":
        for schedule, due in service.schedules(actor, everyone=True):
            when = datetime.fromtimestamp(due, UTC).strftime("%Y-%m-%d %H:%M:%S")
            say(
                f"{schedule.id}  {schedule.user:<16} {schedule.template:<16} {describe_interval(schedule.every_s)}"
                f"  next {when}  last run {schedule.last_run or '-'}"
            )
    elif command == "unschedule":
        service.remove_schedule(actor, args.schedule)
        say(f"removed schedule {args.schedule}")
    return 0
