"""Manage console users: ``python -m ui.users add|remove|list``.

python -m ui.users add --user alice --role researcher      (asks for the password)
echo "$PW" | python -m ui.users add --user bob --role admin --password-stdin

Changing an existing user's role or password, or removing a user, ends every console login of that
user in Redis at once (and with them their notebooks' browser access); if Redis is not reachable, the
console still ends them at the user's next request (it reads the users file every time).
"""

from __future__ import annotations

import argparse
import getpass
import sys

import redis

from launcher.adapters.redis_logins import LoginStore
from launcher.adapters.redis_reports import ReportStore
from launcher.adapters.redis_store import SessionStore
from launcher.errors import LauncherError
from launcher.models import Role
from launcher.settings import Settings
from ui.auth import UserStore, shown_name


def revoke_logins(settings: Settings, user: str, why: str, *, schedules: bool = False) -> None:
    """End every console login of ``user`` (and with ``schedules``, their report schedules: a removed user's reports
    do not go on running); a warning, not a failure, when Redis cannot be reached."""
    try:
        store = SessionStore.from_settings(settings)
        ended = LoginStore(store.redis, settings).revoke_user(user)
        if ended:
            store.record_event("logout", user=user, actor="ui.users", reason=why, detail=f"{ended} login(s) ended")
            print(f"{user}: {ended} console login(s) ended")
        if schedules:
            reports = ReportStore(store)
            for schedule, _ in reports.schedules_for(user):
                reports.remove_schedule(schedule)
                store.record_event("report_unscheduled", user=user, actor="ui.users", reason=why, detail=schedule.id)
                print(f"{user}: report schedule {schedule.id} removed")
    except (redis.RedisError, LauncherError, RuntimeError) as exc:  # RuntimeError: a Redis secret is missing
        print(
            f"warning: could not end {shown_name(user)}'s console logins in Redis ({type(exc).__name__}); "
            "the console ends them at their next request",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ui.users", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="add a user or change their role and password")
    add.add_argument("--user", required=True)
    add.add_argument("--role", required=True, choices=[r.value for r in Role])
    add.add_argument("--password-stdin", action="store_true")
    rm = sub.add_parser("remove", help="remove a user")
    rm.add_argument("--user", required=True)
    sub.add_parser("list", help="list users and roles")
    args = p.parse_args(argv)
    settings = Settings()
    store = UserStore(settings.users_file)
    try:
        if args.command == "add":
            password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass("password: ")
            existed = store.role_of(args.user) is not None
            store.set_user(args.user, Role(args.role), password)
            print(f"{args.user}: {args.role}")
            if existed:  # a new role or password: logins made under the old ones end
                revoke_logins(settings, args.user, "user_changed")
        elif args.command == "remove":
            if not store.remove(args.user):
                print(f"error: no user {shown_name(args.user)}", file=sys.stderr)
                return 6
            revoke_logins(settings, args.user, "user_removed", schedules=True)
        else:
            for name, role in store.roles().items():
                print(f"{name}\t{role.value}")
    except LauncherError as exc:
        print(f"error: {exc.user_message}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
