"""Manage console users: ``python -m ui.users add|remove|list``.

python -m ui.users add --user alice --role researcher      (asks for the password)
echo "$PW" | python -m ui.users add --user bob --role admin --password-stdin
"""

from __future__ import annotations

import argparse
import getpass
import sys

from launcher.errors import LauncherError
from launcher.models import Role
from launcher.settings import Settings
from ui.auth import UserStore


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
    store = UserStore(Settings().users_file)
    try:
        if args.command == "add":
            password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass("password: ")
            store.set_user(args.user, Role(args.role), password)
            print(f"{args.user}: {args.role}")
        elif args.command == "remove":
            if not store.remove(args.user):
                print(f"error: no user {args.user!r}", file=sys.stderr)
                return 6
        else:
            for name, role in store.roles().items():
                print(f"{name}\t{role.value}")
    except LauncherError as exc:
        print(f"error: {exc.user_message}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
