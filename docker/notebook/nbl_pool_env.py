"""The session identity of a claimed warm-pool notebook, for every Python process started after the claim.

A pool container boots with no user identity. When the launcher claims it for a session it writes
``/run/nbl/identity.json`` (the session's read-only folder; only root on the host writes it). Python runs this at
start (``nbl_pool_env.pth`` in site-packages imports it): a kernel started after the claim gets ``USER_ID`` and the
rest of the preset environment, exactly as a container started for the session gets them from Docker. A terminal's
login shell gets them from ``python3 -m nbl_pool_env`` (``/etc/profile.d/nbl_identity.sh``). Variables
already set (a cold-started session's) are never overridden; anything unexpected in the file is ignored.
"""

import json
import os
import re

_FILE = "/run/nbl/identity.json"
_KEYS = {"USER_ID": re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$"), "NBL_SESSION": re.compile(r"^[a-z0-9]{12}$")}


def _apply() -> None:
    try:
        with open(_FILE, "rb") as f:
            data = json.loads(f.read(4096))
    except (OSError, ValueError):
        return
    if not isinstance(data, dict):
        return
    for key, pattern in _KEYS.items():
        value = data.get(key)
        if isinstance(value, str) and pattern.fullmatch(value) and key not in os.environ:
            os.environ[key] = value


_apply()

if __name__ == "__main__":  # python3 -m nbl_pool_env: the same for a login shell (/etc/profile.d/nbl_identity.sh)
    import shlex

    for _key, _pattern in _KEYS.items():
        _value = os.environ.get(_key, "")
        if _pattern.fullmatch(_value):
            print(f"export {_key}={shlex.quote(_value)}")
