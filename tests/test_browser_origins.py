"""Origins in a real browser (Debian's chromium): a page on one session origin against another session.

The attacker controls everything their notebook serves, including JavaScript on their own session
origin (a served file, a JupyterLab extension in their home). Sibling session origins are same-site,
so the victim's Lax cookie travels with requests from there: the entry point must refuse them.
"""

from __future__ import annotations

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from launcher.adapters.redis_webauth import EntryAuth
from launcher.models import Actor, Role, SessionStatus
from tests.helpers import new_context, wait_for
from tests.web import OriginClient, make_login, opened

pytestmark = pytest.mark.docker

ATTACK = """async ({target, kernel}) => {
  const out = {};
  try {
    const r = await fetch(target + '/api/contents/pwned.txt', {method: 'PUT', credentials: 'include',
      headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({type: 'file', format: 'text', content: 'pwned'})});
    out.put = r.status;
  } catch (e) { out.put = 'blocked'; }
  try {
    const r = await fetch(target + '/api/contents', {credentials: 'include'});
    out.read = r.status;
  } catch (e) { out.read = 'blocked'; }
  try {
    await fetch(target + '/api/contents/pwned2.txt', {method: 'PUT', mode: 'no-cors', credentials: 'include',
      body: JSON.stringify({type: 'file', format: 'text', content: 'pwned'})});
    out.simple = 'sent';
  } catch (e) { out.simple = 'blocked'; }
  out.ws = await new Promise(resolve => {
    const ws = new WebSocket(target.replace('http', 'ws') + '/api/kernels/' + kernel + '/channels');
    ws.onopen = () => { resolve('open'); ws.close(); };
    ws.onerror = () => resolve('error');
    setTimeout(() => resolve('timeout'), 10000);
  });
  return out;
}"""


@contextlib.contextmanager
def console_stand_in(stack, logins: dict[str, str]):
    """An HTTP server on the console's port whose /_nbl/authorize runs the console's own step
    (``EntryAuth.issue_code``) for the user named by a ``who`` cookie of the console's origin."""
    auth = EntryAuth(stack.store.redis, stack.settings)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            query = parse_qs(urlsplit(self.path).query)
            user = (self.headers.get("Cookie") or "").removeprefix("who=")
            url = auth.issue_code(
                login_id=logins[user],
                actor=Actor(name=user, role=Role.RESEARCHER),
                session_id=query["sid"][0],
                state=query["state"][0],
            )
            self.send_response(303)
            self.send_header("Location", url)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    port = int(stack.settings.console_url.rsplit(":", 1)[1])
    server = HTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def open_in_browser(context, client: OriginClient, user: str) -> None:
    """Run the open flow in the browser, as ``user`` on the console stand-in."""
    console = client.settings.console_url
    context.add_cookies([{"name": "who", "value": user, "url": console + "/"}])
    page = context.new_page()
    page.goto(client.origin + "/_nbl/start")
    page.wait_for_url(client.origin + "/lab/tree/alpha_research.ipynb", timeout=30_000)
    page.close()


def test_a_sibling_session_page_cannot_write_read_or_open_a_kernel_in_another(clean_stack, browser):
    """JavaScript on the attacker's session origin, in a browser where the victim is logged in to their
    own session, cannot create a file, read the listing, or open a kernel WebSocket in the victim's."""
    st = clean_stack
    alice, mallory = st.actor("bo-alice"), st.actor("bo-mallory")
    sa = st.service.wait(alice, st.service.launch(alice, "alpha_research").id, {SessionStatus.RUNNING}, 120)
    sm = st.service.wait(mallory, st.service.launch(mallory, "alpha_research").id, {SessionStatus.RUNNING}, 120)
    victim = opened(st, sa.id, "bo-alice")
    attacker = opened(st, sm.id, "bo-mallory")
    kernel = victim.post("/api/kernels", json={"name": "python3"}).json()["id"]
    context = new_context(browser)
    logins = {u: make_login(st.store.redis, st.settings, u) for u in ("bo-alice", "bo-mallory")}
    try:
        with console_stand_in(st, logins):
            open_in_browser(context, victim, "bo-alice")
            open_in_browser(context, attacker, "bo-mallory")
        page = context.new_page()
        # The victim's own origin works in this browser: the cookie is valid.
        page.goto(victim.origin + "/api/status")
        assert '"started"' in page.content()
        # The attacker's origin, where the attacker's JavaScript runs: JupyterLab's page, whose CSP
        # (unlike an API answer's default-src 'none') lets scripts fetch, as a lab extension would.
        page.goto(attacker.origin + "/lab")
        out = page.evaluate(ATTACK, {"target": victim.origin, "kernel": kernel})
        assert out["put"] == "blocked" or out["put"] == 403, out
        assert out["read"] == "blocked" or out["read"] == 403, out
        assert out["ws"] in ("error", "timeout"), out
        assert not (st.settings.workspaces_dir / "bo-alice" / "pwned.txt").exists()
        assert not (st.settings.workspaces_dir / "bo-alice" / "pwned2.txt").exists()
        refused = [
            line
            for line in (st.workdir / "nginx" / "access.log").read_text().splitlines()
            if victim.host.split(":")[0] in line and '" 403 ' in line
        ]
        assert refused, (out, (st.workdir / "nginx" / "access.log").read_text()[-3000:])
        # The victim's own requests still work afterwards.
        wait_for(lambda: victim.get("/api/contents").status_code == 200, 5, "the victim's own access")
    finally:
        context.close()
        victim.close()
        attacker.close()
