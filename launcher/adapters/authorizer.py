"""The entry point's authorizer: nginx asks it about every request to a session origin.

A small ASGI app on a UNIX socket beside nginx (``launcher.entrypoint run`` starts both). nginx
sends it, for a request to ``<sid>.<notebook domain>``:

    /_nbl_auth       (``auth_request`` subrequest, no body) 200 with ``X-Nbl-Token`` for nginx to add
                     upstream, 401 when the browser holds no valid cookie for this session (nginx
                     then starts the open flow), 403 otherwise (``X-Nbl-Reason`` says why)
    /_nbl/start      step 1 of the open flow (``launcher.adapters.redis_webauth``)
    /_nbl/callback   step 3
    /_nbl/status     GET, for the tab's idle warning (``docker/nginx/idle.js``): JSON with the status and
                     the idle time left; the same Origin rules and cookie check as every request, no secret
    /_nbl/keepalive  POST, "Keep running" from the tab: the owner's ``KeepAlive`` (this origin's Origin only)
    /_nbl/idle.js    the idle warning's script, which nginx adds to JupyterLab's pages (static, cached)

The session id comes from nginx (``X-Nbl-Sid``, captured from the Host by ``server_name``), the
original method from ``X-Original-Method``. Decisions are cached in memory for at most
``entry_cache_s`` (≤ 1 s, the revocation bound); the Origin rules are applied on every request.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import redis.asyncio

from launcher.adapters.redis_store import SessionStore
from launcher.adapters.redis_webauth import (
    CHECK_SCRIPT,
    REDEEM_SCRIPT,
    SESSION_COOKIE,
    STATE_COOKIE,
    Verdict,
    digest,
    new_secret,
    valid_random,
    valid_sid,
)
from launcher.errors import Conflict, LauncherError, NotFound
from launcher.models import Reason, Session, SessionStatus, utcnow
from launcher.policy import last_active
from launcher.settings import REPO_ROOT, Settings
from launcher.transitions import ActorKind, By, KeepAlive

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

SAFE_METHODS = frozenset({"GET", "HEAD"})
CACHE_MAX = 10_000
STATE_TTL_S = 300
# nginx adds Referrer-Policy and X-Content-Type-Options to every answer of a session origin.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
    (b"cache-control", b"no-store"),
]
IDLE_JS = REPO_ROOT / "docker" / "nginx" / "idle.js"
KEEPALIVE_EVERY_S = 10.0  # one keep-alive per session this often at most (each is an audit entry)


def idle_js_version(path: Path = IDLE_JS) -> str:
    """The script's content hash: nginx asks for ``/_nbl/idle.js?v=<hash>``, so it may be cached for good."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def idle_status(session: Session, settings: Settings, now: datetime) -> dict[str, Any]:
    """What the tab's idle warning needs of a session (nothing secret): whether it runs, how long until it
    is stopped for idleness if nothing happens, and whether to warn now. A busy kernel is not idle."""
    out: dict[str, Any] = {
        "status": session.status.value,
        "idle_left_s": None,
        "warn": False,
        "warn_before_s": settings.warn_before_reap_s,
        "console": settings.console_url,
    }
    active = last_active(session)
    if session.status != SessionStatus.RUNNING or active is None or session.kernels_busy > 0:
        return out
    left = settings.idle_timeout_s - (now - min(active, now)).total_seconds()
    out["idle_left_s"] = max(0, math.floor(left))
    out["warn"] = left < settings.warn_before_reap_s
    return out


@dataclass(frozen=True)
class Request:
    """What the authorizer needs of one request, as nginx passed it."""

    sid: str
    method: str
    origin: str | None
    fetch_site: str | None
    fetch_mode: str | None
    fetch_dest: str | None
    upgrade: bool
    cookies: dict[str, str]


def cross_origin_refusal(req: Request, own_origin: str) -> str | None:
    """Why a request must be refused whatever cookie it carries (None: it may go on).

    A page on another origin, including a sibling session (same-site, so Lax cookies travel with
    it), may only navigate to this one at the top level. It may not open a WebSocket, send a
    non-GET request, or fetch, embed or frame anything here.
    """
    if req.upgrade:
        return None if req.origin == own_origin else "websocket from another origin"
    if req.origin is not None and req.origin != own_origin:
        return "request from another origin"
    if req.method not in SAFE_METHODS and req.origin != own_origin:
        return "state-changing request without this origin"
    if req.fetch_site in ("cross-site", "same-site"):
        navigation = req.method in SAFE_METHODS and req.fetch_mode == "navigate" and req.fetch_dest == "document"
        if not navigation:
            return f"{req.fetch_site} {req.fetch_mode or ''} {req.fetch_dest or ''}".strip()
    return None


def parse_cookies(header: str) -> dict[str, str]:
    """The first value of each cookie name (a tossed duplicate never replaces an earlier one)."""
    found: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in found:
            found[name] = value.strip()
    return found


class Authorizer:
    """The ASGI app. One per entry point process; holds an async Redis client and a tiny cache."""

    def __init__(self, settings: Settings, client: redis.asyncio.Redis) -> None:
        self.settings = settings
        self._r = client
        self.prefix = f"{settings.instance}:"
        self._check = client.register_script(CHECK_SCRIPT)
        self._redeem = client.register_script(REDEEM_SCRIPT)
        self._cache: dict[tuple[str, str], tuple[float, Verdict]] = {}
        self.secure_cookies = True  # __Host- cookies need Secure; browsers accept it on http://*.localhost
        self._store: SessionStore | None = None  # synchronous, for KeepAlive (made on first use)
        self._kept: dict[str, float] = {}  # session id -> monotonic time of its last keep-alive
        self._idle_js = IDLE_JS.read_bytes()

    # -- ASGI -------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        sid = headers.get("x-nbl-sid", "")
        if not valid_sid(sid):
            await _respond(send, 404, [], b"unknown session origin\n")
            return
        req = Request(
            sid=sid,
            method=str(headers.get("x-original-method") or scope["method"]).upper(),
            origin=headers.get("origin"),
            fetch_site=headers.get("sec-fetch-site"),
            fetch_mode=headers.get("sec-fetch-mode"),
            fetch_dest=headers.get("sec-fetch-dest"),
            upgrade=bool(headers.get("x-nbl-upgrade")),
            cookies=parse_cookies(headers.get("cookie", "")),
        )
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            if path == "/_nbl_auth":
                await self.auth(req, send)
            elif path == "/_nbl/start":
                await self.start(req, send)
            elif path == "/_nbl/callback":
                await self.callback(req, (query.get("code") or [""])[0], send)
            elif path in ("/_nbl/status", "/_nbl/keepalive"):
                # The method of this very request (a client's X-Original-Method never counts here).
                req = replace(req, method=str(scope["method"]).upper(), upgrade=False)
                await self.idle(req, path == "/_nbl/keepalive", send)
            elif path == "/_nbl/idle.js":
                await self.script(send)
            else:
                await _respond(send, 404, [], b"not found\n")
        except (redis.RedisError, LauncherError):
            await _respond(send, 503, [(b"x-nbl-reason", b"state store unreachable")], b"try again shortly\n")

    # -- every request ----------------------------------------------------------------------------
    async def auth(self, req: Request, send: Send) -> None:
        own = self.settings.session_origin(req.sid)
        refusal = cross_origin_refusal(req, own)
        if refusal is not None:
            await _respond(send, 403, [(b"x-nbl-reason", refusal.encode())], b"")
            return
        cookie = req.cookies.get(SESSION_COOKIE, "")
        if not valid_random(cookie):
            await _respond(send, 401, [(b"x-nbl-reason", b"no login")], b"")
            return
        verdict = await self.check(cookie, req.sid)
        if verdict.ok:
            await _respond(send, 200, [(b"x-nbl-token", verdict.value.encode())], b"")
        elif verdict.outcome == "no_login":
            await _respond(send, 401, [(b"x-nbl-reason", b"no login")], b"")
        else:
            await _respond(send, 403, [(b"x-nbl-reason", verdict.outcome.encode())], b"")

    async def check(self, cookie: str, sid: str) -> Verdict:
        """The Redis verdict for this cookie and session, cached for at most ``entry_cache_s``."""
        key = (digest(cookie), sid)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        outcome, value = await self._check(keys=[self.prefix + "nbauth:" + key[0]], args=[sid, self.prefix])
        verdict = Verdict(outcome, value)
        if self.settings.entry_cache_s > 0:
            if len(self._cache) >= CACHE_MAX:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                if len(self._cache) >= CACHE_MAX:
                    self._cache.clear()
            self._cache[key] = (now + self.settings.entry_cache_s, verdict)
        return verdict

    # -- the idle warning in the JupyterLab tab -----------------------------------------------------
    async def idle(self, req: Request, keep: bool, send: Send) -> None:
        """``GET /_nbl/status`` and ``POST /_nbl/keepalive``: authorized exactly like every request to
        this origin (Origin rules, then the cookie, the console login, the owner and the status)."""
        allowed = "POST" if keep else "GET"
        if req.method != allowed:
            await _json(send, 405, {"status": "method_not_allowed"}, [(b"allow", allowed.encode())])
            return
        refusal = cross_origin_refusal(req, self.settings.session_origin(req.sid))
        if refusal is not None:
            await _json(send, 403, {"status": "refused"}, [(b"x-nbl-reason", refusal.encode())])
            return
        cookie = req.cookies.get(SESSION_COOKIE, "")
        verdict = await self.check(cookie, req.sid) if valid_random(cookie) else Verdict("no_login")
        if not verdict.ok:
            code = 401 if verdict.outcome == "no_login" else 403
            await _json(send, code, {"status": verdict.outcome, "console": self.settings.console_url}, [])
            return
        raw = await self._r.get(self.prefix + "session:" + req.sid)
        if not raw:
            await _json(send, 403, {"status": "not_running", "console": self.settings.console_url}, [])
            return
        session = Session.from_storage(raw)
        if keep:
            session = await self._keep_alive(session)
        await _json(send, 200, idle_status(session, self.settings, utcnow()), [])

    async def _keep_alive(self, session: Session) -> Session:
        """The owner's "Keep running": ``KeepAlive`` through the store (an audit entry), at most once per
        ``KEEPALIVE_EVERY_S`` per session; a session that stopped meanwhile is answered as it is."""
        now = time.monotonic()
        if now - self._kept.get(session.id, -math.inf) < KEEPALIVE_EVERY_S:
            return session
        if len(self._kept) >= CACHE_MAX:
            self._kept = {k: v for k, v in self._kept.items() if now - v < KEEPALIVE_EVERY_S}
        self._kept[session.id] = now
        if self._store is None:
            self._store = SessionStore.from_settings(self.settings)
        command = KeepAlive(by=By(ActorKind.USER, session.user), reason=Reason.KEEPALIVE)
        try:
            return await asyncio.to_thread(self._store.apply, session.id, command)
        except (Conflict, NotFound):  # it stopped meanwhile: the tab says so
            return session.model_copy(update={"status": SessionStatus.STOPPED})
        except LauncherError:  # Redis did not answer: nothing was applied, so a retry is not throttled
            self._kept.pop(session.id, None)
            raise

    async def script(self, send: Send) -> None:
        """The idle warning's script: static, the same for every session, cached (its URL carries its hash)."""
        headers = [
            (b"content-type", b"text/javascript; charset=utf-8"),
            (b"cache-control", b"public, max-age=31536000, immutable"),
            (b"content-length", str(len(self._idle_js)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self._idle_js})

    # -- the open flow ----------------------------------------------------------------------------
    async def start(self, req: Request, send: Send) -> None:
        """Step 1: a fresh state cookie on this origin, then to the console to be authorized."""
        state = new_secret()
        query = urlencode({"sid": req.sid, "state": state})
        target = f"{self.settings.console_url.rstrip('/')}/_nbl/authorize?{query}"
        await _respond(
            send,
            303,
            [(b"location", target.encode()), self._cookie(STATE_COOKIE, state, STATE_TTL_S)],
            b"",
        )

    async def callback(self, req: Request, code: str, send: Send) -> None:
        """Step 3: spend the code (once, same browser), then this origin's own login cookie."""
        state = req.cookies.get(STATE_COOKIE, "")
        cookie = new_secret()
        if valid_random(code) and valid_random(state):
            outcome, template = await self._redeem(
                keys=[self.prefix + "nbcode:" + digest(code), self.prefix + "nbauth:" + digest(cookie)],
                args=[req.sid, digest(state), self.settings.login_ttl_s, self.prefix],
            )
        else:
            outcome, template = "malformed", ""
        clear_state = self._cookie(STATE_COOKIE, "", 0)
        if outcome != "ok":
            await self._page(send, 403, _REFUSED.get(outcome, _REFUSED["malformed"]), [clear_state])
            return
        landing = f"/lab/tree/{template}.ipynb" if template else "/lab"
        headers = [(b"location", landing.encode()), clear_state]
        headers.append(self._cookie(SESSION_COOKIE, cookie, self.settings.login_ttl_s))
        await _respond(send, 303, headers, b"")

    def _cookie(self, name: str, value: str, max_age: int) -> tuple[bytes, bytes]:
        attrs = f"{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax"
        if self.secure_cookies:
            attrs += "; Secure"
        return (b"set-cookie", attrs.encode())

    async def _page(self, send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]]) -> None:
        console = html.escape(self.settings.console_url, quote=True)
        body = (
            "<!doctype html><html><head><meta charset='utf-8'><title>Notebook</title></head>"
            "<body style='font-family:sans-serif;max-width:36rem;margin:4rem auto'>"
            f"<h1>This notebook did not open</h1><p>{html.escape(message)}</p>"
            f"<p><a href='{console}'>Back to the console</a></p></body></html>"
        ).encode()
        await _respond(send, status, [(b"content-type", b"text/html; charset=utf-8"), *headers], body)


_REFUSED = {
    "no_code": "This link was already used or has expired. Open the notebook again from the console.",
    "wrong_state": "This link was started in another browser. Open the notebook from the console in this one.",
    "wrong_session": "This link belongs to another notebook. Open the notebook from the console.",
    "logged_out": "You are signed out of the console. Sign in and open the notebook again.",
    "not_running": "This notebook is not running. Start it again from the console.",
    "malformed": "This link is incomplete or expired. Open the notebook from the console.",
}


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*SECURITY_HEADERS, (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, payload: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps(payload).encode()
    await _respond(send, status, [(b"content-type", b"application/json"), *headers], body)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def build(settings: Settings) -> Authorizer:
    client = redis.asyncio.Redis.from_url(
        settings.redis_dsn(), decode_responses=True, socket_timeout=2, socket_connect_timeout=2
    )
    return Authorizer(settings, client)


def serve(settings: Settings, socket_path: str) -> None:
    """Run the authorizer on a UNIX socket (blocks until SIGTERM or SIGINT).

    The socket's folder decides who may connect: ``launcher.entrypoint`` makes it root's, group of
    the entry point's workers, mode 0750.
    """
    import uvicorn

    app = build(settings)
    config = uvicorn.Config(
        app,
        uds=socket_path,
        log_level="warning",
        access_log=False,  # nginx keeps the access log; query strings (codes) are never logged here
        lifespan="on",
        proxy_headers=False,
        server_header=False,
        date_header=False,
    )
    uvicorn.Server(config).run()
