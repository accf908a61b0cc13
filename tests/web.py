"""A browser-like HTTP client for session origins, through the real entry point.

Python's resolver does not map ``*.localhost`` to loopback (browsers do), so requests go to
127.0.0.1 with the session origin in ``Host``. Cookies are kept by hand, per origin: the entry
point's cookies are ``__Host-`` and ``Secure``, which Python's cookie jar would not send over http.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import redis

from launcher.adapters.redis_webauth import EntryAuth
from launcher.models import Actor, Role
from launcher.settings import Settings


def make_login(client: redis.Redis, settings: Settings, user: str, role: Role = Role.RESEARCHER) -> str:
    """A console login as the console records it (``<instance>:login:<id>``, a hash with ``user``)."""
    login_id = secrets.token_urlsafe(32)
    key = f"{settings.instance}:login:{login_id}"
    client.hset(key, mapping={"user": user, "role": role.value, "created": "0"})
    client.expire(key, settings.login_ttl_s)
    return login_id


def parse_set_cookies(response: httpx.Response) -> dict[str, str]:
    found = {}
    for header in response.headers.get_list("set-cookie"):
        name, _, rest = header.partition("=")
        found[name.strip()] = rest.split(";", 1)[0]
    return found


class OriginClient:
    """One browser's view of one session origin: its own cookies, Origin and Host headers."""

    def __init__(self, settings: Settings, session_id: str, *, timeout: float = 30, verify: Any = True) -> None:
        self.settings = settings
        self.session_id = session_id
        self.origin = settings.session_origin(session_id)
        scheme, self.host = self.origin.split("://", 1)
        port = self.host.rsplit(":", 1)[1] if ":" in self.host else ("443" if scheme == "https" else "80")
        self.base = f"{scheme}://127.0.0.1:{port}"
        self.cookies: dict[str, str] = {}
        self.http = httpx.Client(base_url=self.base, timeout=timeout, follow_redirects=False, verify=verify)

    def cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items() if v)

    def request(self, method: str, path: str, *, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        sent = {"Host": self.host}
        if self.cookies:
            sent["Cookie"] = self.cookie_header()
        if method.upper() not in ("GET", "HEAD"):
            sent["Origin"] = self.origin
            if "_xsrf" in self.cookies:
                sent["X-XSRFToken"] = self.cookies["_xsrf"]
        sent.update(headers or {})
        # TLS: the certificate is checked against the session's host name, not 127.0.0.1.
        extensions = {"sni_hostname": self.host.split(":")[0]} if self.base.startswith("https") else None
        response = self.http.request(method, path, headers=sent, extensions=extensions, **kw)
        self.http.cookies.clear()
        for name, value in parse_set_cookies(response).items():
            if value:
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)
        return response

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("POST", path, **kw)

    def start(self) -> str:
        """Step 1 of the open flow: the state this origin set; returns it."""
        r = self.get("/_nbl/start")
        assert r.status_code == 303, (r.status_code, r.text)
        location = r.headers["location"]
        assert location.startswith(self.settings.console_url.rstrip("/") + "/_nbl/authorize?"), location
        return parse_qs(urlsplit(location).query)["state"][0]

    def callback(self, url: str) -> httpx.Response:
        """Follow the console's redirect to this origin's callback (the path; tests that move a session
        between entry points keep one origin in the record)."""
        parts = urlsplit(url)
        assert parts.path == "/_nbl/callback", url
        return self.get(f"{parts.path}?{parts.query}")

    def open(self, client: redis.Redis, login_id: str, actor: Actor) -> httpx.Response:
        """The whole open flow, with the console's step done by the same code the console runs."""
        state = self.start()
        url = EntryAuth(client, self.settings).issue_code(
            login_id=login_id, actor=actor, session_id=self.session_id, state=state
        )
        r = self.callback(url)
        assert r.status_code == 303, (r.status_code, r.text)
        self.get("/lab")  # JupyterLab's page sets the _xsrf cookie its API calls need
        return r

    def close(self) -> None:
        self.http.close()


def opened(stack: Any, session_id: str, user: str, role: Role = Role.RESEARCHER) -> OriginClient:
    """A client logged in to ``user``'s session through the open flow."""
    login = make_login(stack.store.redis, stack.settings, user, role)
    client = OriginClient(stack.settings, session_id)
    client.open(stack.store.redis, login, Actor(name=user, role=role))
    return client


def reach_login(page: Any, url: str, settle: Any, artifact: Path | None = None) -> None:
    """Load the console's first page and click its Log in link.

    On this loaded 2-core machine a first Streamlit render now and then never arrives (the page keeps no script
    run; seen twice in full runs, never alone). The page is loaded once more after 45 s, as a person would: a page
    that is really broken fails both times, and the first failure's screenshot is kept.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in (1, 2):
        page.goto(url)
        try:
            settle(page)
            page.get_by_role("link", name="Log in").click(timeout=45_000)
            return
        except PlaywrightTimeout:
            if attempt == 2:
                raise
            if artifact is not None:
                artifact.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=artifact, full_page=True)
