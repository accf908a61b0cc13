"""Operator CLI: ``launcher start|stop|status|stop-all|audit|templates|hosts|queue|relaunch|report|reproduce``.

Acts with operator (admin) authority. Exit 0 on success; otherwise a one-line reason on stderr and
the exit code of the error class (see ``launcher.errors``). ``status`` never prints a token;
``start`` prints ``open_url``: the session's own origin, where the owner, logged in to the console,
opens it (no secret is ever printed).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from launcher import report_cli
from launcher.bootstrap import build_service
from launcher.errors import InvalidRequest, LauncherError
from launcher.models import TERMINAL_STATUSES, Actor, HostInfo, HostState, Session, SessionStatus
from launcher.service import LauncherService
from launcher.settings import Settings
from launcher.validation import validate_user_id


def _row(s: Session) -> str:
    last = s.last_activity_at.strftime("%H:%M:%S") if s.last_activity_at else "-"
    return f"{s.id}  {s.user:<20} {s.label:<16} {s.profile:<9} {s.status.value:<9} {s.host or '-':<10} last={last}"


def _host_row(h: HostInfo) -> str:
    gib = 2**30
    return (
        f"{h.name:<12} {h.state.value:<9} sessions {h.sessions}/{h.max_sessions}  "
        f"cpus {h.used_cpus:g}/{h.cpus:g}  memory {h.used_mem_bytes / gib:.1f}/{h.mem_bytes / gib:.1f} GiB  "
        f"seen {h.seen_at:%H:%M:%S}" + (" (drained)" if h.drained and h.state != HostState.DRAINING else "")
    )


def _print_session(session: Session, as_json: bool, *, with_open_url: bool) -> None:
    if as_json:
        data: dict[str, Any] = session.public()
        if with_open_url:
            data["open_url"] = session.open_url()
        print(json.dumps(data, indent=2))
    else:
        print(_row(session))
        if session.error:
            print(f"  error: {session.error}")
        if with_open_url and session.open_url():
            print(f"  open: {session.open_url()}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launcher", description="Research notebook launcher (operator CLI)")
    sub = p.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="launch a notebook for a user")
    start.add_argument("--user", required=True)
    start.add_argument("--template", required=True)
    start.add_argument("--profile", help="resource profile (default: the configured default)")
    start.add_argument("--name", help="the session's name (default: the template's); unique among the user's")
    start.add_argument("--wait", action="store_true", help="wait until it is running (or failed), in the queue too")
    start.add_argument("--no-queue", action="store_true", help="refuse instead of waiting when no host has room")
    start.add_argument("--snapshot", default="", help="the data snapshot to pin (default: the current one)")
    start.add_argument("--timeout", type=float, default=180.0)
    start.add_argument("--json", action="store_true")
    start.add_argument(
        "--service-account",
        action="store_true",
        help="start for a user the console does not know (password mode: not in the users file)",
    )
    stop = sub.add_parser("stop", help="stop a user's session (a waiting launch is cancelled)")
    who = stop.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="the user's newest live session")
    who.add_argument("--session", help="one session by id")
    stop.add_argument("--wait", action="store_true")
    stop.add_argument("--timeout", type=float, default=60.0)
    stop.add_argument("--json", action="store_true")
    status = sub.add_parser("status", help="one user's latest session, or every live session")
    status.add_argument("--user")
    status.add_argument("--json", action="store_true")
    stop_all = sub.add_parser("stop-all", help="stop every live session")
    stop_all.add_argument("--wait", action="store_true")
    stop_all.add_argument("--timeout", type=float, default=180.0)
    audit = sub.add_parser("audit", help="the audit trail, newest first")
    audit.add_argument("--user")
    audit.add_argument("--limit", type=int, default=50)
    audit.add_argument("--json", action="store_true")
    sub.add_parser("templates", help="list the templates")
    hosts = sub.add_parser("hosts", help="the Docker hosts: room, load, state; drain, undrain or forget one")
    hosts.add_argument("action", nargs="?", choices=["list", "drain", "undrain", "forget"], default="list")
    hosts.add_argument("host", nargs="?")
    hosts.add_argument("--json", action="store_true")
    relaunch = sub.add_parser("relaunch", help="relaunch exactly: a new session on what an earlier one ran on")
    relaunch.add_argument("--session", required=True)
    relaunch.add_argument("--name")
    relaunch.add_argument("--wait", action="store_true")
    relaunch.add_argument("--timeout", type=float, default=180.0)
    relaunch.add_argument("--json", action="store_true")
    queue = sub.add_parser("queue", help="the admission queue, first in line first")
    queue.add_argument("--json", action="store_true")
    report_cli.add_parsers(sub)
    return p


def _require_known_user(settings: Settings, user: str) -> None:
    """In password mode, only users of the console's users file get sessions (a typo makes no orphan session)."""
    validate_user_id(user)  # a malformed id is refused as such first
    if settings.auth_mode != "password":
        return  # OIDC: users are known to the provider, not to us
    try:
        known = json.loads(settings.users_file.read_text()).get("users", {})
    except FileNotFoundError:
        known = {}
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"cannot read the users file {settings.users_file}: {exc}") from None
    if user not in known:
        raise InvalidRequest(
            f"{user!r} is not a console user (not in {settings.users_file}): add them with "
            "'python -m ui.users add', or pass --service-account to start a session for a service account"
        )


def run(argv: Sequence[str] | None, settings: Settings) -> int:
    args = _parser().parse_args(argv)
    actor = Actor.operator(f"operator:{getpass.getuser()}")
    if args.command in ("report", "reproduce"):
        if getattr(args, "report_command", "") in ("run", "schedule"):
            _require_known_user(settings, args.user)
        return report_cli.run(args, settings, actor)
    service = build_service(settings)
    if args.command == "start":
        if not args.service_account:
            _require_known_user(settings, args.user)
        session = service.launch(
            actor,
            args.template,
            user=args.user,
            profile=args.profile,
            name=args.name,
            queue=not args.no_queue,
            snapshot=args.snapshot,
        )
        if session.status == SessionStatus.WAITING and not args.json:
            place = service.store.queue_position(session)
            print(f"waiting for room: number {place} in the queue", file=sys.stderr)
        return _started(service, actor, session, args)
    elif args.command == "stop":
        session = service.stop(actor, args.user, session_id=args.session)
        if args.wait:
            session = service.wait(actor, session.id, set(TERMINAL_STATUSES), args.timeout)
        _print_session(session, args.json, with_open_url=False)
    elif args.command == "status":
        if args.user:
            found = service.session_for(actor, args.user)
            sessions = [found] if found else []
        else:
            sessions = service.list_sessions(actor)
        if args.json:
            payload = [s.public() for s in sessions]
            print(json.dumps(payload[0] if args.user and payload else payload, indent=2))
        else:
            for s in sessions:
                print(_row(s))
            if not sessions:
                print("no sessions")
    elif args.command == "stop-all":
        batch = service.stop_all(actor)
        progress = service.stop_all_progress(actor, batch)
        print(f"stop-all {batch}: asked {progress.total} session(s) to stop")
        deadline = time.monotonic() + args.timeout
        while args.wait and not progress.finished and time.monotonic() < deadline:
            time.sleep(0.2)
            progress = service.stop_all_progress(actor, batch)
        if args.wait:
            print(f"stopped {progress.done} of {progress.total}")
            if not progress.finished:
                return 7
    elif args.command == "audit":
        events = service.audit(actor, user=args.user, limit=args.limit)
        if args.json:
            print(json.dumps([e.model_dump(mode="json") for e in events], indent=2))
        for e in [] if args.json else events:
            print(
                f"{e.time:%Y-%m-%d %H:%M:%S} {e.session_id} {e.user:<16} {e.previous or '-':>8} -> "
                f"{e.action:<9} by {e.actor} ({e.reason}) {e.detail}"
            )
    elif args.command == "templates":
        print("\n".join(service.templates()))
    elif args.command == "relaunch":
        session = service.relaunch(actor, args.session, name=args.name)
        return _started(service, actor, session, args)
    elif args.command == "hosts":
        return _hosts(service, actor, args)
    elif args.command == "queue":
        waiting = service.queue(actor)
        if args.json:
            print(json.dumps([s.public() for s in waiting], indent=2))
        else:
            for place, s in enumerate(waiting, start=1):
                print(f"{place:>3}. {_row(s)} waiting since {s.status_since:%H:%M:%S}")
            stats = service.queue_stats(actor)
            p50 = stats["recent_wait_p50_s"]
            print(f"{int(stats['depth'])} waiting; recent admissions waited {p50:.1f} s (median)")
    return 0


def _started(service: LauncherService, actor: Actor, session: Session, args: argparse.Namespace) -> int:
    """After start or relaunch: wait if asked, print the session with its Open link; 8 when the start failed."""
    if args.wait:
        session = service.wait(actor, session.id, {SessionStatus.RUNNING}, args.timeout)
    session = service.get(actor, session.id)
    _print_session(session, args.json, with_open_url=True)
    if session.status == SessionStatus.ERROR:
        print(f"launcher: error: start failed: {session.error}", file=sys.stderr)
        return 8
    return 0


def _hosts(service: LauncherService, actor: Actor, args: argparse.Namespace) -> int:
    if args.action != "list":
        if not args.host:
            raise InvalidRequest(f"launcher hosts {args.action} needs a host name")
        if args.action == "forget":
            service.forget_host(actor, args.host)
            print(f"forgot host {args.host}")
            return 0
        info = service.drain(actor, args.host, draining=args.action == "drain")
        print(_host_row(info))
        return 0
    hosts = service.hosts(actor)
    if args.json:
        print(json.dumps([h.model_dump(mode="json") for h in hosts], indent=2))
    else:
        for h in hosts:
            print(_host_row(h))
        if not hosts:
            print("no Docker host has registered (is a worker running?)")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    try:
        settings = Settings.of_checkout()
        code = run(argv, settings)
    except LauncherError as exc:
        print(f"launcher: error: {exc.user_message}", file=sys.stderr)
        code = exc.exit_code
    except ValueError as exc:  # invalid settings
        print(f"launcher: error: invalid configuration: {exc}".splitlines()[0], file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
