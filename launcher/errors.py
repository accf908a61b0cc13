"""The launcher's one error tree.

    LauncherError                 base; ``user_message`` is safe to show, ``log_message`` is for operators
     ├── InvalidRequest           malformed user id, unknown template, path tricks      (CLI exit 2)
     ├── PermissionDenied         the actor lacks the permission                         (CLI exit 3)
     ├── Conflict                 a live session exists, or the state moved underneath   (CLI exit 4)
     ├── LimitReached             global or per-host session cap                         (CLI exit 5)
     ├── NotFound                 no such session                                        (CLI exit 6)
     ├── RuntimeUnavailable       Redis, the broker or the Docker engine did not answer  (CLI exit 7)
     ├── StartFailed              the container or Jupyter did not come up               (CLI exit 8)
     └── SchemaMismatch           a stored record written by a newer launcher             (CLI exit 9)

Vendor errors (redis-py, docker-py, kombu, Celery) are translated where they enter, in the adapters
(``launcher.adapters``: the Redis store, the Celery dispatcher, the Docker runtime). No message in this
tree ever carries a Jupyter token.
"""

from __future__ import annotations


class LauncherError(Exception):
    """Base of every error the launcher raises on purpose."""

    exit_code = 1

    def __init__(self, user_message: str, log_message: str | None = None) -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.log_message = log_message or user_message


class InvalidRequest(LauncherError):
    """The request is malformed; nothing was changed."""

    exit_code = 2


class PermissionDenied(LauncherError):
    """The actor is not allowed to do this."""

    exit_code = 3


class Conflict(LauncherError):
    """The request clashes with the current state (a live session exists, a state moved)."""

    exit_code = 4


class LimitReached(LauncherError):
    """A session cap is reached."""

    exit_code = 5


class NotFound(LauncherError):
    """There is no such session."""

    exit_code = 6


class RuntimeUnavailable(LauncherError):
    """A backing service (Redis, broker, Docker engine) is not reachable."""

    exit_code = 7


class StartFailed(LauncherError):
    """The notebook container or its Jupyter server failed to come up."""

    exit_code = 8


class SchemaMismatch(LauncherError):
    """A stored record has a schema version this code does not know (written by a newer launcher)."""

    exit_code = 9
