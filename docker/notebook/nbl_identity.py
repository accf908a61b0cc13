"""Jupyter identity for a notebook behind the launcher's entry point.

The entry point authorizes every browser request itself and adds ``X-Nbl-Auth: <secret>``
upstream; this provider accepts that header and nothing else (no token in a URL, no password
form, no login cookie). Two things differ from a stock token setup, on purpose:

- the server has no ``token``, so JupyterLab's page config carries none: the secret never
  reaches the browser;
- a request it accepts is *not* marked token-authenticated, so Jupyter keeps its own Origin and
  XSRF checks (a token-authenticated request skips both: jupyter_server ``should_check_origin``).

The secret is read once, at start, from the file named by ``NBL_AUTH_FILE`` (mounted read-only;
the worker deletes it once the server answers), never from the environment, where a same-uid
process could read it in ``/proc/<pid>/environ``. The server then makes itself non-dumpable, so
neither its kernels nor any same-uid process on the host can read its memory or ``/proc`` files.
"""

from __future__ import annotations

import ctypes
import hmac
import os

from jupyter_server.auth.identity import IdentityProvider, User
from traitlets import default

MAX_SECRET_BYTES = 256
PR_SET_DUMPABLE = 4


def _read_secret() -> bytes:
    path = os.environ.get("NBL_AUTH_FILE", "")
    if not path:
        raise SystemExit("NBL_AUTH_FILE is not set: this server only runs behind the launcher's entry point")
    with open(path, "rb") as f:
        secret = f.read(MAX_SECRET_BYTES + 1).strip()
    if not 32 <= len(secret) <= MAX_SECRET_BYTES:
        raise SystemExit(f"{path} does not hold a usable secret")
    return secret


class EntryPointIdentityProvider(IdentityProvider):
    """Accepts only the header the entry point adds; keeps Jupyter's Origin and XSRF checks."""

    @default("token")
    def _token_default(self) -> str:
        return ""

    @default("need_token")
    def _need_token_default(self) -> bool:
        return False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._secret = _read_secret()
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            raise SystemExit("could not make the notebook server non-dumpable")
        name = os.environ.get("USER_ID") or "jovyan"
        self._user = User(username=name, name=name, display_name=name)

    def get_user(self, handler):  # type: ignore[no-untyped-def]
        got = handler.request.headers.get("X-Nbl-Auth", "")
        if got and hmac.compare_digest(got.encode(), self._secret):
            return self._user
        return None

    def is_token_authenticated(self, handler) -> bool:  # type: ignore[no-untyped-def]
        return False

    def should_check_origin(self, handler) -> bool:  # type: ignore[no-untyped-def]
        return True

    @property
    def login_available(self) -> bool:
        return False

    @property
    def logout_available(self) -> bool:
        return False
