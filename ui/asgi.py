"""The console's process entry point: ``streamlit run ui/asgi.py``.

Streamlit serves the pages (``ui/app.py``); beside them, on the same port, a few small routes:

    GET  /login              the password form; in OIDC mode, a redirect to the provider
    POST /login              checks the argon2 hash (throttled per user and address, body at most 4 KiB),
                             creates a console login in Redis and sets the signed nbl_login cookie
    GET  /oauth2callback     OIDC: exchanges the code (PKCE, state bound to this browser), checks the
                             ID token, maps the claims strictly, creates the console login
    GET  /logout             a page with a POST form (a GET never logs out)
    POST /logout             with the login's CSRF token: deletes the login in Redis
    GET  /_nbl/authorize     opening a notebook: mints a one-time code for the session origin
    GET  /_nbl/files         the logged-in user's workspace files (where the workspace is on this machine)
    GET  /_nbl/reports/<run>/<path>
                             one recorded artifact of a report run (the owner's or, for an admin, anyone's); the
                             HTML rendering inline under a sandboxing CSP, everything else as a download
    GET  /metrics            Prometheus text format: queue, admissions, sessions by status, hosts (no user
                             names, no session ids); only with ``Authorization: Bearer <LAUNCHER_METRICS_TOKEN>``,
                             404 while that token is not set

Every login, failure, throttle refusal and logout goes to the audit stream and to this process's log.
Every response carries security headers (``SecurityHeaders``), Streamlit's own pages included.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hmac  # noqa: E402
import html  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import parse_qs, quote, urlencode, urlsplit  # noqa: E402

import redis  # noqa: E402
import streamlit as st  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402
from starlette.datastructures import MutableHeaders  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402
from starlette.types import ASGIApp, Message, Receive, Scope, Send  # noqa: E402

from launcher.adapters.redis_logins import LoginStore, LoginThrottle  # noqa: E402
from launcher.adapters.redis_reports import ReportStore  # noqa: E402
from launcher.adapters.redis_store import SessionStore  # noqa: E402
from launcher.adapters.redis_webauth import EntryAuth, digest  # noqa: E402
from launcher.errors import InvalidRequest, LauncherError, NotFound, PermissionDenied  # noqa: E402
from launcher.logs import event  # noqa: E402
from launcher.models import SessionStatus  # noqa: E402
from launcher.settings import Settings  # noqa: E402
from ui.auth import (  # noqa: E402
    COOKIE,
    ClaimsRefused,
    UserStore,
    actor_from_claims,
    csrf_ok,
    csrf_token,
    login_name,
    resolve,
    shown_name,
    sign,
    unsign,
)

# Import what the pages import now, once, before any browser connects: a module imported during a page's
# first run can be interrupted by Streamlit stopping that run (a rerun request), which leaves a half-made
# module behind ("'NoneType' object has no attribute '__dict__'" in a dataclass; seen on a loaded machine).
importlib.import_module("ui.views")
importlib.import_module("ui.reports_view")

log = logging.getLogger("launcher.console")
MAX_FORM_BYTES = 4096
OIDC_COOKIE = "nbl_oidc"
OIDC_STATE_TTL_S = 600
# Our own small pages: nothing but inline style. Streamlit's pages keep their scripts, but may not be framed.
OWN_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; frame-ancestors 'none'"
# Images only from the console itself (and data:/blob: URLs): text a user wrote cannot make a colleague's or an
# admin's browser fetch an outside address (a beacon) even where it slips into markdown.
STREAMLIT_CSP = "frame-ancestors 'self'; base-uri 'self'; object-src 'none'; img-src 'self' data: blob:"
# A report's artifacts were written by a user's notebook: no script of theirs may run on the console's origin
# (an admin opening a researcher's report would otherwise run it with the admin's login). ``sandbox`` gives the
# page an opaque origin with scripts, forms, popups and plugins off; the rest allows only its inline styles and
# data: images (the rendered notebook's charts).
REPORT_CSP = (
    "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
REPORT_RUN_ID = re.compile(r"[a-z0-9]{12}")
_OWN_PATHS = ("/login", "/logout", "/oauth2callback", "/_nbl/", "/metrics")
MAX_AUTHORIZATION_CHARS = 1024  # a longer Authorization header is refused unread
METRICS_WAITS = 1000  # the admission waits the summary's quantiles are computed over (the store keeps 1000)


# -- logging: the console's events must reach its log as started by scripts/start.sh ----------------


def configure_logging() -> None:
    """Send ``launcher.*`` events (INFO and up) to stderr, which scripts/start.sh appends to var/log/console.log.

    Streamlit configures only its own loggers; without this, INFO events of ours went nowhere.
    """
    logger = logging.getLogger("launcher")
    if any(getattr(h, "_nbl_console", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._nbl_console = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def load_settings() -> Settings:
    """The console's settings; refuses to start (a clear message, a non-zero exit) without a usable cookie key."""
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(str(e.get("msg", "")) for e in exc.errors())
        raise SystemExit(f"console: invalid LAUNCHER_* settings: {problems}") from None
    if not len(settings.cookie_secret):
        raise SystemExit(
            "console: LAUNCHER_COOKIE_SECRET is not set: refusing to start without a cookie key "
            "(scripts/start.sh generates one on first start and keeps it under var/)"
        )
    return settings  # a public development value is refused by Settings itself


# -- security headers ------------------------------------------------------------------------------


class SecurityHeaders:
    """Adds CSP (with frame-ancestors), nosniff and no-referrer to every HTTP response of the console."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        own = path.startswith(_OWN_PATHS)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                # One of our routes may set a sandboxing policy of its own (report artifacts): it is kept.
                sandboxed = own and headers.get("content-security-policy", "").startswith("sandbox;")
                if not sandboxed and (own or "content-security-policy" not in headers):
                    headers["Content-Security-Policy"] = OWN_CSP if own else STREAMLIT_CSP
                if own:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


# -- small pages -----------------------------------------------------------------------------------

# The console's look (Streamlit's light theme: its font stack, its red primary), and its favicon.
FAVICON = (
    "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 32 32'%3E%3Crect width='32' "
    "height='32' rx='6' fill='%23ff4b4b'/%3E%3Cpath d='M9 8h10l4 4v12H9z' fill='white'/%3E%3C/svg%3E"
)
_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Research notebooks</title><link rel="icon" href="{favicon}">
<style>
body{{margin:0;background:#fff;color:#31333f;
font-family:"Source Sans Pro","Source Sans 3",-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,sans-serif}}
main{{max-width:26rem;margin:5rem auto;padding:0 1rem}}
h1{{font-weight:700;font-size:2.4rem;margin:0 0 .3rem}}
.sub{{color:#808495;margin:0 0 1.6rem}}
.card{{border:1px solid rgba(49,51,63,.2);border-radius:.5rem;padding:1.2rem 1.4rem}}
label{{display:block;margin:.8rem 0 .3rem;font-size:.9rem}}
input{{width:100%;padding:.55rem .7rem;font:inherit;border:1px solid #d0d3da;border-radius:.5rem;
box-sizing:border-box;background:#f0f2f6}}
input:focus{{outline:2px solid #ff4b4b;border-color:#ff4b4b}}
button{{margin-top:1.2rem;padding:.5rem 1.1rem;font:inherit;border-radius:.5rem;border:1px solid #ff4b4b;
background:#ff4b4b;color:#fff;cursor:pointer}}
button:hover{{background:#ff2b2b}}a{{color:#ff4b4b}}
.err{{background:#ffecec;color:#7d353b;border-radius:.5rem;padding:.7rem .9rem}}
</style></head>
<body><main><h1>Research notebooks</h1><p class="sub">JupyterLab for research, one click away.</p>
<div class="card">{body}</div></main></body></html>"""

_LOGIN_FORM = """{error}<form method="post" action="/login">
<input type="hidden" name="next" value="{next}">
<label for="username">User</label><input id="username" name="username" autocomplete="username" autofocus>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password">
<button type="submit">Log in</button></form>"""

_LOGOUT_FORM = """<p>Log out of the console? Open notebooks lose their access too.</p>
<form method="post" action="/logout"><input type="hidden" name="csrf" value="{token}">
<button type="submit">Log out</button></form><p><a href="/">Back to the console</a></p>"""


def page(title: str, body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    text = _PAGE.format(title=html.escape(title), body=body, favicon=FAVICON)
    return HTMLResponse(text, status_code=status, headers=headers)


def message_page(title: str, text: str, status: int) -> HTMLResponse:
    body = f'<p class="err">{html.escape(text)}</p><p><a href="/">Back to the console</a></p>'
    return page(title, body, status)


def login_page(next_path: str, error: str = "", status: int = 200, headers: dict[str, str] | None = None) -> Response:
    error_html = f'<p class="err">{html.escape(error)}</p>' if error else ""
    return page("Log in", _LOGIN_FORM.format(error=error_html, next=html.escape(next_path)), status, headers)


def safe_next(value: object) -> str:
    """Where to go after logging in: a path on this console only ("/" for anything else)."""
    if not isinstance(value, str) or not value.startswith("/") or len(value) > 2048:
        return "/"
    if value.startswith("//") or "\\" in value or any(ord(c) < 0x21 or ord(c) > 0x7E for c in value):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


async def read_form(request: Request, limit: int = MAX_FORM_BYTES) -> dict[str, str] | None:
    """A url-encoded form of at most ``limit`` bytes, read in chunks; None when it is larger."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    try:
        fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True, max_num_fields=16)
    except ValueError:  # more fields than any of our forms has: treated as an empty form
        return {}
    return {k: v[0] for k, v in fields.items()}


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# -- the routes ------------------------------------------------------------------------------------


class Console:
    """The console's own routes, over one Redis client."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.store = SessionStore(client, settings) if client is not None else SessionStore.from_settings(settings)
        self.redis = self.store.redis
        self.logins = LoginStore(self.redis, settings)
        self.throttle = LoginThrottle(self.redis, settings)
        self.secure = settings.console_url.startswith("https://")
        self._oidc: Any = None

    def routes(self) -> list[Route]:
        return [
            Route("/login", self.login_get, methods=["GET"]),
            Route("/login", self.login_post, methods=["POST"]),
            Route("/oauth2callback", self.oidc_callback, methods=["GET"]),
            Route("/logout", self.logout_get, methods=["GET"]),
            Route("/logout", self.logout_post, methods=["POST"]),
            Route("/_nbl/authorize", self.authorize, methods=["GET"]),
            Route("/_nbl/files", self.files, methods=["GET"]),
            Route("/_nbl/reports/{run_id}/{path:path}", self.report_artifact, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]

    # -- audit --------------------------------------------------------------------------------
    def audit(self, action: str, user: object, reason: str, detail: str = "") -> None:
        """One event to the audit stream (session id empty) and one line to the log (the name escaped).

        ``user`` may be whatever someone typed: the audit stream keeps a valid user id as is, anything
        else escaped like the log does.
        """
        event(log, f"console.{action}", user=shown_name(user), reason=reason, detail=detail)
        named = user if isinstance(user, str) and login_name(user) == user else shown_name(user)
        try:
            self.store.record_event(action, user=named, actor="console", reason=reason, detail=detail)
        except LauncherError as exc:
            log.error("console.audit_failed action=%s error=%s", action, exc.log_message)

    def _set_login_cookie(self, response: Response, login_id: str) -> None:
        response.set_cookie(
            COOKIE,
            sign(self.settings, login_id),
            max_age=self.settings.login_ttl_s,
            httponly=True,
            samesite="lax",
            secure=self.secure,
            path="/",
        )

    # -- password login -----------------------------------------------------------------------
    async def login_get(self, request: Request) -> Response:
        next_path = safe_next(request.query_params.get("next", "/"))
        if self.settings.auth_mode == "oidc":
            return await self.oidc_start(next_path)
        error = "Wrong user or password." if request.query_params.get("failed") else ""
        return login_page(next_path, error)

    async def login_post(self, request: Request) -> Response:
        if self.settings.auth_mode != "password":
            return message_page("Log in", "This console signs in through the identity provider.", 404)
        form = await read_form(request)
        if form is None:
            return message_page("Log in", "The login form is too large.", 413)
        try:
            return await run_in_threadpool(self._password_login, form, client_address(request))
        except redis.RedisError as exc:
            log.error("console.login_unavailable error=%s", type(exc).__name__)
            return message_page("Log in", "Logging in is not possible right now; try again shortly.", 503)

    def _password_login(self, form: dict[str, str], address: str) -> Response:
        typed = form.get("username", "")
        next_path = safe_next(form.get("next", "/"))
        name = login_name(typed)
        who = name or typed  # the user id, or the attempt as typed (escaped by ``audit``)
        bucket = name or "\0not-a-user-id"
        wait = self.throttle.begin(bucket, address)
        if wait:
            return self._throttled(who, address, wait, next_path)
        try:
            actor = UserStore(self.settings.users_file).verify(typed, form.get("password", ""))
        except BaseException:
            self.throttle.release(bucket)
            raise
        if actor is None:
            locked = self.throttle.failed(bucket, address)
            self.audit("login_failed", who, "password", f"from {address}")
            if locked:
                return self._throttled(who, address, locked, next_path)
            return RedirectResponse("/login?" + urlencode({"failed": "1", "next": next_path}), status_code=303)
        self.throttle.succeeded(bucket, address)
        login_id = self.logins.create(actor.name, actor.role)
        self.audit("login", actor.name, "password", f"from {address}; role {actor.role.value}")
        response = RedirectResponse(next_path, status_code=303)
        self._set_login_cookie(response, login_id)
        return response

    def _throttled(self, who: str, address: str, wait: int, next_path: str) -> Response:
        self.audit("login_throttled", who, "password", f"from {address}; retry in {wait} s")
        message = f"Too many attempts; try again in {wait} s."
        return login_page(next_path, message, status=429, headers={"Retry-After": str(wait)})

    # -- OIDC (Authlib and httpx are imported only in OIDC mode) -------------------------------
    @staticmethod
    def _oidc_errors() -> tuple[type[Exception], ...]:
        import httpx
        from authlib.common.errors import AuthlibBaseError
        from joserfc.errors import JoseError

        return (httpx.HTTPError, AuthlibBaseError, JoseError, ValueError, KeyError, RuntimeError)

    def _oidc_app(self) -> Any:
        if self._oidc is None:
            from authlib.integrations.starlette_client import OAuth

            s = self.settings
            self._oidc = OAuth().register(
                name="launcher",
                client_id=s.oidc_client_id,
                client_secret=s.oidc_client_secret.get_secret_value(),
                server_metadata_url=s.oidc_metadata_url,
                client_kwargs={"scope": "openid email profile", "code_challenge_method": "S256", "timeout": 10},
            )
        return self._oidc

    @property
    def redirect_uri(self) -> str:
        return self.settings.console_url.rstrip("/") + "/oauth2callback"

    async def oidc_start(self, next_path: str) -> Response:
        try:
            rv = await self._oidc_app().create_authorization_url(self.redirect_uri)
        except self._oidc_errors() as exc:
            log.warning("console.oidc_unreachable error=%s", type(exc).__name__)
            return message_page("Log in", "The sign-in provider is not reachable; try again shortly.", 503)
        record = json.dumps({"nonce": rv.get("nonce", ""), "verifier": rv.get("code_verifier", ""), "next": next_path})
        key = f"{self.settings.instance}:oidcstate:{digest(rv['state'])}"
        await run_in_threadpool(self.redis.set, key, record, ex=OIDC_STATE_TTL_S)
        response = RedirectResponse(rv["url"], status_code=303)
        response.set_cookie(
            OIDC_COOKIE,
            rv["state"],
            max_age=OIDC_STATE_TTL_S,
            httponly=True,
            samesite="lax",
            secure=self.secure,
            path="/oauth2callback",
        )
        return response

    async def oidc_callback(self, request: Request) -> Response:
        if self.settings.auth_mode != "oidc":
            return message_page("Log in", "This console does not sign in through an identity provider.", 404)
        params = request.query_params
        if params.get("error"):
            return message_page("Log in", "The identity provider did not sign you in; try again.", 400)
        state, code = params.get("state", ""), params.get("code", "")
        bound = request.cookies.get(OIDC_COOKIE, "")
        if not (state and code and bound and len(state) <= 128 and hmac.compare_digest(state, bound)):
            return message_page("Log in", "This sign-in did not start in this browser; log in again.", 400)
        key = f"{self.settings.instance}:oidcstate:{digest(state)}"
        raw = await run_in_threadpool(self.redis.getdel, key)
        if not raw:
            return message_page("Log in", "This sign-in has expired or was already used; log in again.", 400)
        record = json.loads(raw)
        oidc = self._oidc_app()
        try:
            token = await oidc.fetch_access_token(
                redirect_uri=self.redirect_uri, code=code, code_verifier=record["verifier"] or None
            )
            claims = await oidc.parse_id_token(token, nonce=record["nonce"]) if "id_token" in token else None
        except self._oidc_errors() as exc:
            log.warning("console.oidc_failed error=%s", type(exc).__name__)
            return message_page("Log in", "The identity provider's answer could not be verified; log in again.", 502)
        if not claims:
            return message_page("Log in", "The identity provider sent no ID token; log in again.", 502)
        return await run_in_threadpool(self._oidc_login, dict(claims), record["next"], client_address(request))

    def _oidc_login(self, claims: dict[str, Any], next_path: str, address: str) -> Response:
        try:
            actor, idp_role = actor_from_claims(self.settings, claims)
        except ClaimsRefused as exc:
            typed = claims.get(self.settings.oidc_user_claim)
            self.audit("login_failed", typed, "oidc", f"from {address}; {exc.args[0]}")
            return message_page("Log in", f"Your identity cannot be used here: {exc.args[0]}.", 403)
        login_id = self.logins.create(actor.name, actor.role, method="oidc", idp_role=idp_role)
        self.audit("login", actor.name, "oidc", f"from {address}; role {actor.role.value}")
        response = RedirectResponse(safe_next(next_path), status_code=303)
        self._set_login_cookie(response, login_id)
        response.delete_cookie(OIDC_COOKIE, path="/oauth2callback")
        return response

    # -- logout -------------------------------------------------------------------------------
    async def logout_get(self, request: Request) -> Response:
        """A GET never logs out: it shows a form that POSTs with the login's CSRF token."""
        login_id = unsign(self.settings, request.cookies.get(COOKIE))
        if login_id is None:
            return RedirectResponse("/login", status_code=303)
        return page("Log out", _LOGOUT_FORM.format(token=csrf_token(self.settings, login_id)))

    async def logout_post(self, request: Request) -> Response:
        form = await read_form(request)
        if form is None:
            return message_page("Log out", "The logout form is too large.", 413)
        login_id = unsign(self.settings, request.cookies.get(COOKIE))
        if login_id is not None and not csrf_ok(self.settings, login_id, form.get("csrf")):
            return message_page("Log out", "This logout did not come from the console; use its Log out button.", 403)
        if login_id is not None:
            await run_in_threadpool(self._logout, login_id, client_address(request))
        # OIDC: back to the console's page, not /login (which would go straight back to the provider).
        response = RedirectResponse("/login" if self.settings.auth_mode == "password" else "/", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax", secure=self.secure)
        return response

    def _logout(self, login_id: str, address: str) -> None:
        login = self.logins.get(login_id)
        if self.logins.revoke(login_id) and login is not None:
            self.audit("logout", login.user, "user", f"from {address}")

    # -- opening a notebook -------------------------------------------------------------------
    async def authorize(self, request: Request) -> Response:
        """Step 2 of the open flow (``launcher.adapters.redis_webauth``): the owner, logged in here, gets a
        one-time code."""
        try:
            return await run_in_threadpool(self._authorize, request.cookies, request.url.path, request.url.query)
        except redis.RedisError as exc:
            log.error("console.authorize_unavailable error=%s", type(exc).__name__)
            return message_page("Open notebook", "The launcher is not reachable right now; try again shortly.", 503)

    def _authorize(self, cookies: dict[str, str], path: str, query: str) -> Response:
        try:
            params = {k: v[0] for k, v in parse_qs(query, max_num_fields=8).items()}
        except ValueError:
            params = {}
        resolved = resolve(self.settings, self.logins, cookies)
        if resolved.revoked and resolved.login is not None:
            self.audit("logout", resolved.login.user, resolved.revoked)
        if resolved.actor is None or resolved.login is None:
            here = safe_next(f"{path}?{query}" if query else path)
            return RedirectResponse("/login?" + urlencode({"next": here}), status_code=303)
        state = params.get("state", "")
        try:
            url = EntryAuth(self.redis, self.settings).issue_code(
                login_id=resolved.login.id, actor=resolved.actor, session_id=params.get("sid", ""), state=state
            )
        except LauncherError as exc:
            status = {InvalidRequest: 400, PermissionDenied: 403, NotFound: 404}.get(type(exc), 503)
            return message_page("Open notebook", exc.user_message, status)
        event(log, "console.open_code", user=shown_name(resolved.actor.name), sid=params.get("sid", "")[:12])
        return RedirectResponse(url, status_code=303, headers={"Referrer-Policy": "no-referrer"})

    # -- the owner's workspace files (only where the workspace is local to this console) ----------
    async def files(self, request: Request) -> Response:
        """``?path=<relative>``: one file of the logged-in user's workspace; ``?archive=1``: all of it as a zip."""
        try:
            return await run_in_threadpool(self._files, request.cookies, dict(request.query_params))
        except redis.RedisError as exc:
            log.error("console.files_unavailable error=%s", type(exc).__name__)
            return message_page("Files", "The launcher is not reachable right now; try again shortly.", 503)

    def _files(self, cookies: dict[str, str], params: dict[str, str]) -> Response:
        from launcher.models import Permission
        from launcher.rbac import authorize
        from ui import workspace

        resolved = resolve(self.settings, self.logins, cookies)
        actor = resolved.actor
        if actor is None or not authorize(actor, Permission.LAUNCH_NOTEBOOKS):
            return message_page("Files", "Log in to the console to download your files.", 403)
        root = workspace.workspace_root(self.settings, actor.name)
        if root is None:
            return message_page("Files", "Your workspace is not on this console's machine: use JupyterLab.", 404)
        try:
            if params.get("archive") == "1":
                handle = workspace.archive(root)
                name, media = f"{actor.name}-workspace.zip", "application/zip"
            else:
                handle, _size = workspace.open_file(root, params.get("path", ""))
                name, media = params["path"].rsplit("/", 1)[-1], "application/octet-stream"
        except LauncherError as exc:
            status = {InvalidRequest: 400, NotFound: 404}.get(type(exc), 413)
            return message_page("Files", exc.user_message, status)
        event(log, "console.download", user=shown_name(actor.name), what="archive" if "archive" in params else "file")
        quoted = quote(name, safe="")
        headers = {"Content-Disposition": f"attachment; filename*=UTF-8''{quoted}", "Cache-Control": "no-store"}

        def chunks() -> Any:
            with handle:
                while chunk := handle.read(1 << 16):
                    yield chunk

        return StreamingResponse(chunks(), media_type=media, headers=headers)

    # -- a report run's artifacts ----------------------------------------------------------------
    async def report_artifact(self, request: Request) -> Response:
        """``/_nbl/reports/<run>/<path>``: one of the run's recorded artifacts, to its owner or an admin."""
        run_id, path = request.path_params["run_id"], request.path_params["path"]
        try:
            return await run_in_threadpool(self._report_artifact, request.cookies, run_id, path, request.url.path)
        except (redis.RedisError, LauncherError) as exc:
            log.error("console.report_artifact_unavailable error=%s", type(exc).__name__)
            return message_page("Reports", "The launcher is not reachable right now; try again shortly.", 503)

    def _report_artifact(self, cookies: dict[str, str], run_id: str, path: str, here: str) -> Response:
        from launcher.rbac import may_act_on
        from launcher.validation import safe_child, validate_user_id
        from ui import workspace

        resolved = resolve(self.settings, self.logins, cookies)
        actor = resolved.actor
        if actor is None:
            return RedirectResponse("/login?" + urlencode({"next": safe_next(here)}), status_code=303)
        # Someone else's run, an unknown run and a file the run did not record all look the same: no such file.
        missing = message_page("Reports", "There is no such report file.", 404)
        if not REPORT_RUN_ID.fullmatch(run_id):
            return missing
        run = ReportStore(self.store).get(run_id)
        if run is None or not may_act_on(actor, run.user) or path not in run.artifacts:
            return missing
        try:
            root = safe_child(safe_child(self.settings.reports_dir, validate_user_id(run.user)), run.id)
            handle, _size = workspace.open_file(root, path)  # no symlink followed, bounded in size
        except LauncherError as exc:
            if isinstance(exc, InvalidRequest | NotFound):
                return missing
            return message_page("Reports", exc.user_message, 413)
        event(log, "console.report_download", user=shown_name(actor.name), run=run.id, path=path[:200])
        name = quote(path.rsplit("/", 1)[-1], safe="")
        headers = {"Content-Security-Policy": REPORT_CSP, "Cache-Control": "no-store"}
        if path.endswith((".html", ".htm")):
            media = "text/html; charset=utf-8"
            headers["Content-Disposition"] = f"inline; filename*=UTF-8''{name}"
        elif path.endswith(".json"):
            media = "text/plain; charset=utf-8"
            headers["Content-Disposition"] = f"inline; filename*=UTF-8''{name}"
        else:
            media = "application/octet-stream"
            headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{name}"

        def chunks() -> Any:
            with handle:
                while chunk := handle.read(1 << 16):
                    yield chunk

        return StreamingResponse(chunks(), media_type=media, headers=headers)

    # -- operators' metrics (Prometheus) -----------------------------------------------------------
    def _metrics_token(self) -> str:
        token = getattr(self.settings, "metrics_token", None)
        if token is None:
            return ""
        return token.get_secret_value() if hasattr(token, "get_secret_value") else str(token)

    async def metrics(self, request: Request) -> Response:
        """The launcher's own figures for Prometheus (Flower has Celery's): bearer token only, 404 without one."""
        expected = self._metrics_token()
        if not expected:
            return Response("Not Found\n", status_code=404, media_type="text/plain")
        header = request.headers.get("authorization", "")
        scheme, _, given = header[: MAX_AUTHORIZATION_CHARS + 1].partition(" ")
        if len(header) > MAX_AUTHORIZATION_CHARS or scheme.lower() != "bearer" or not given.strip():
            return Response(
                "A bearer token is required.\n",
                status_code=401,
                media_type="text/plain",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        if not hmac.compare_digest(given.strip().encode(), expected.encode()):
            log.warning("console.metrics_refused from=%s", client_address(request))
            return Response("Wrong token.\n", status_code=403, media_type="text/plain")
        try:
            text = await run_in_threadpool(self._metrics_text)
        except (redis.RedisError, LauncherError) as exc:
            log.error("console.metrics_unavailable error=%s", type(exc).__name__)
            return Response("The launcher's state store is not reachable.\n", status_code=503, media_type="text/plain")
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    def _metrics_text(self) -> str:
        """Every read bounded: the queue's counters, at most METRICS_WAITS waits, the registered hosts and
        the sessions placed on them (each host holds at most its cap); the waiting ones are counted, not read."""
        stats = self.store.queue_stats()
        waits = self.store.recent_waits(METRICS_WAITS)
        hosts = self.store.hosts()
        statuses = {s: 0 for s in SessionStatus if s.live}
        statuses[SessionStatus.WAITING] = int(stats["depth"])
        for h in hosts:
            for s in self.store.list_live(host=h.name):
                if s.status.live and s.status != SessionStatus.WAITING:
                    statuses[s.status] += 1
        return render_metrics(stats, waits, hosts, statuses)


def _label(value: str) -> str:
    """A label value escaped as the text format wants (backslash, double quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def render_metrics(stats: dict[str, float], waits: list[float], hosts: list[Any], statuses: dict[Any, int]) -> str:
    """The Prometheus text format (0.0.4) of the launcher's figures: no user names, no session ids."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)

    family("nbl_queue_depth", "gauge", "Launches waiting for room in the admission queue.", [("", stats["depth"])])
    family(
        "nbl_queue_oldest_wait_seconds",
        "gauge",
        "How long the launch first in the admission queue has waited (0 when none waits).",
        [("", round(stats["oldest_wait_s"], 3))],
    )
    family(
        "nbl_admissions_total", "counter", "Launches admitted from the queue onto a host.", [("", stats["admissions"])]
    )
    summary = [(f'{{quantile="{q}"}}', round(quantile(waits, q), 3)) for q in (0.5, 0.9, 0.99)]
    family(
        "nbl_admission_wait_seconds",
        "summary",
        f"How long recent admissions waited in the queue (the last {METRICS_WAITS} at most).",
        summary,
    )
    out.append(f"nbl_admission_wait_seconds_sum {_number(round(sum(waits), 3))}")
    out.append(f"nbl_admission_wait_seconds_count {len(waits)}")
    family(
        "nbl_sessions",
        "gauge",
        "Live sessions by status (waiting: in the admission queue).",
        [(f'{{status="{_label(str(status))}"}}', n) for status, n in statuses.items()],
    )
    per_host = [
        (
            "nbl_host_up",
            "1 when the host's worker answers (up or draining), 0 when it is down.",
            lambda h: 0 if h.state.value == "down" else 1,
        ),
        ("nbl_host_draining", "1 when an admin drains the host (no new sessions).", lambda h: 1 if h.drained else 0),
        ("nbl_host_cpus", "CPUs the host offers sessions.", lambda h: h.cpus),
        ("nbl_host_cpus_used", "CPUs reserved by the sessions on the host.", lambda h: h.used_cpus),
        ("nbl_host_memory_bytes", "Memory the host offers sessions.", lambda h: h.mem_bytes),
        ("nbl_host_memory_used_bytes", "Memory reserved by the sessions on the host.", lambda h: h.used_mem_bytes),
        ("nbl_host_sessions", "Sessions placed on the host.", lambda h: h.sessions),
    ]
    for name, help_text, value_of in per_host:
        family(name, "gauge", help_text, [(f'{{host="{_label(h.name)}"}}', value_of(h)) for h in hosts])
    return "\n".join(out) + "\n"


def console_routes(settings: Settings, client: redis.Redis | None = None) -> list[Route]:
    return Console(settings, client).routes()


def console_middleware() -> list[Middleware]:
    return [Middleware(SecurityHeaders)]


def no_source_watching() -> None:
    """A deployed console does not watch its source tree (unless the operator asked for a watcher).

    Streamlit's default watcher follows every folder the app imports from, recursively; on a busy host
    (image builds, notebook workspaces, test runs) its inotify queue overflows and pages load slowly.
    """
    from streamlit import config

    if not config.is_manually_set("server.fileWatcherType"):
        config.set_option("server.fileWatcherType", "none", "ui/asgi.py")


configure_logging()
no_source_watching()
settings = load_settings()
app = st.App(Path(__file__).with_name("app.py"), routes=console_routes(settings), middleware=console_middleware())
