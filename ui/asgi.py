"""The console's process entry point: ``streamlit run ui/asgi.py``.

Streamlit serves the pages (``ui/app.py``); beside them, on the same port, three small routes do the
password login: ``GET /login`` (the form), ``POST /login`` (checks the argon2 hash, sets the signed
HttpOnly cookie) and ``GET /logout``. In OIDC mode Streamlit's own ``/oauth2callback`` is used instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import parse_qs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import logging  # noqa: E402

import streamlit as st  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import HTMLResponse, RedirectResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from launcher.logs import event  # noqa: E402
from launcher.settings import Settings  # noqa: E402
from ui.auth import COOKIE, UserStore, oidc_secrets, sign  # noqa: E402

log = logging.getLogger("launcher.console")
settings = Settings()

_FORM = """<!doctype html><html><head><meta charset="utf-8"><title>Log in · Research notebooks</title>
<style>body{{font-family:sans-serif;max-width:22rem;margin:6rem auto;color:#222}}
label{{display:block;margin:.8rem 0 .2rem}}input{{width:100%;padding:.5rem;font-size:1rem}}
button{{margin-top:1.2rem;padding:.6rem 1.2rem;font-size:1rem}}.err{{color:#b00020}}</style></head>
<body><h1>Research notebooks</h1>{error}<form method="post" action="/login">
<label for="username">User</label><input id="username" name="username" autocomplete="username" autofocus>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password">
<button type="submit">Log in</button></form></body></html>"""


async def login_form(request: Request) -> Response:
    error = '<p class="err">Wrong user or password.</p>' if request.query_params.get("failed") else ""
    return HTMLResponse(_FORM.format(error=error))


async def login_submit(request: Request) -> Response:
    fields = parse_qs((await request.body()).decode(errors="replace"))
    user = (fields.get("username") or [""])[0]
    password = (fields.get("password") or [""])[0]
    actor = await run_in_threadpool(UserStore(settings.users_file).verify, user, password)
    if actor is None:
        event(log, "console.login_failed", user=user[:64])
        return RedirectResponse("/login?failed=1", status_code=303)
    event(log, "console.login", user=actor.name, role=actor.role.value)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        COOKIE,
        sign(settings, actor.name),
        max_age=settings.login_ttl_s,
        httponly=True,
        samesite="lax",
        secure=settings.console_url.startswith("https://"),
        path="/",
    )
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


routes = [
    Route("/login", login_form, methods=["GET"]),
    Route("/login", login_submit, methods=["POST"]),
    Route("/logout", logout, methods=["GET"]),
]
app = st.App(Path(__file__).with_name("app.py"), routes=routes, secrets=oidc_secrets(settings))
