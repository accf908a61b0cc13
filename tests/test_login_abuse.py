"""Password guessing is bounded and visible: throttling per user name and per address (real Redis), a body
size cap, and every failure and refusal in the audit stream and in the console's log, names escaped."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from launcher.adapters.redis_store import SessionStore
from launcher.models import Role
from launcher.settings import Settings
from tests.helpers import wait_for
from tests.stack import start_console
from tests.test_login import audit_actions, console_client, console_settings, rclient
from ui.auth import COOKIE, UserStore


def test_fifty_wrong_passwords_are_throttled_audited_and_the_right_one_works_after_the_wait(
    monkeypatch, redis_url, tmp_path, caplog
):
    """50 wrong passwords in a row: 429 "try again in N s" after the 5th, all audited; the right one works later."""
    settings = console_settings(
        redis_url, tmp_path, login_throttle_limit=5, login_lockout_s=3, login_throttle_address_limit=1000
    )
    UserStore(settings.users_file).set_user("erin", Role.RESEARCHER, "erin-password")
    caplog.set_level(logging.INFO, logger="launcher.console")
    with console_client(monkeypatch, settings) as client:
        answers = [
            client.post("/login", data={"username": "erin", "password": f"guess-{i}"}, follow_redirects=False)
            for i in range(50)
        ]
        assert [a.status_code for a in answers[:4]] == [303] * 4
        assert {a.status_code for a in answers[4:]} == {429}
        last = answers[-1]
        wait = int(last.headers["retry-after"])
        assert 1 <= wait <= 3 * 64 and f"Too many attempts; try again in {wait} s." in last.text
        # During the lockout even the right password is refused, without being checked.
        locked = client.post("/login", data={"username": "erin", "password": "erin-password"}, follow_redirects=False)
        assert locked.status_code == 429 and COOKIE not in locked.cookies
        time.sleep(int(locked.headers["retry-after"]) + 0.2)
        good = client.post("/login", data={"username": "erin", "password": "erin-password"}, follow_redirects=False)
        assert good.status_code == 303 and good.headers["location"] == "/" and COOKIE in good.cookies

    actions = audit_actions(settings, "erin")
    assert actions.count("login_failed") >= 5 and actions.count("login_throttled") >= 46
    assert actions[-1] == "login" and len(actions) >= 52
    events = SessionStore(rclient(settings), settings).audit(user="erin", limit=100)
    assert all(e.session_id == "" and e.actor == "console" for e in events)
    assert any("retry in" in e.detail for e in events if e.action == "login_throttled")
    logged = caplog.text
    assert "console.login_failed user='erin'" in logged and "console.login_throttled user='erin'" in logged
    assert "erin-password" not in logged and "guess-" not in logged


def test_parallel_guesses_cannot_slip_past_the_count(monkeypatch, redis_url, tmp_path):
    """Twenty guesses at one name sent at once: at most the limit get a password check, the rest get 429."""
    settings = console_settings(redis_url, tmp_path, login_throttle_limit=5, login_throttle_address_limit=1000)
    UserStore(settings.users_file).set_user("erin", Role.RESEARCHER, "erin-password")
    clients = [console_client(monkeypatch, settings, client=(f"203.0.113.{i}", 40000)) for i in range(20)]
    for c in clients:
        c.__enter__()
    try:
        with ThreadPoolExecutor(max_workers=20) as pool:
            codes = list(
                pool.map(
                    lambda c: (
                        c.post("/login", data={"username": "erin", "password": "x"}, follow_redirects=False).status_code
                    ),
                    clients,
                )
            )
    finally:
        for c in clients:
            c.__exit__(None, None, None)
    assert codes.count(303) <= 5 and codes.count(303) + codes.count(429) == 20
    assert audit_actions(settings, "erin").count("login_failed") <= 5


def test_throttle_per_address_spans_user_names(monkeypatch, redis_url, tmp_path):
    """One address guessing many user names is locked out; another address is not."""
    settings = console_settings(redis_url, tmp_path, login_throttle_limit=100, login_throttle_address_limit=3)
    UserStore(settings.users_file).set_user("erin", Role.RESEARCHER, "erin-password")
    with console_client(monkeypatch, settings, client=("192.0.2.7", 40000)) as guesser:
        codes = [
            guesser.post("/login", data={"username": f"user{i}", "password": "x"}, follow_redirects=False).status_code
            for i in range(4)
        ]
        assert codes == [303, 303, 429, 429]
        fresh_name = guesser.post(
            "/login", data={"username": "erin", "password": "erin-password"}, follow_redirects=False
        )
        assert fresh_name.status_code == 429
    with console_client(monkeypatch, settings, client=("192.0.2.8", 40000)) as colleague:
        ok = colleague.post("/login", data={"username": "erin", "password": "erin-password"}, follow_redirects=False)
        assert ok.status_code == 303


def test_throttle_per_user_spans_addresses_and_spellings(monkeypatch, redis_url, tmp_path):
    """Guesses at one user from many addresses, in any ASCII spelling, count together; Unicode spellings don't fold."""
    settings = console_settings(redis_url, tmp_path, login_throttle_limit=3, login_throttle_address_limit=100)
    UserStore(settings.users_file).set_user("kate", Role.ADMIN, "kates-password")
    codes = []
    for i, spelling in enumerate(["kate", "KATE", " Kate ", "kate"]):
        with console_client(monkeypatch, settings, client=(f"198.51.100.{i + 1}", 40000)) as client:
            codes.append(
                client.post("/login", data={"username": spelling, "password": "x"}, follow_redirects=False).status_code
            )
    assert codes == [303, 303, 429, 429]
    with console_client(monkeypatch, settings, client=("198.51.100.9", 40000)) as client:
        # The Kelvin-sign spelling is not kate: not her bucket, and her password does not log it in.
        kelvin = client.post(
            "/login", data={"username": "\u212aate", "password": "kates-password"}, follow_redirects=False
        )
        assert kelvin.status_code == 303 and kelvin.headers["location"].startswith("/login?failed=1")
        assert COOKIE not in kelvin.cookies


def test_login_body_is_capped(monkeypatch, redis_url, tmp_path):
    """A login body over 4 KiB gets 413, whether it declares its length or streams without one."""
    settings = console_settings(redis_url, tmp_path)
    UserStore(settings.users_file).set_user("erin", Role.RESEARCHER, "erin-password")
    with console_client(monkeypatch, settings) as client:
        big = client.post("/login", data={"username": "erin", "password": "p" * 5000}, follow_redirects=False)
        assert big.status_code == 413

        def chunks():
            yield b"username=erin&password="
            for _ in range(64):
                yield b"p" * 1024

        streamed = client.post(
            "/login",
            content=chunks(),
            headers={"content-type": "application/x-www-form-urlencoded"},
            follow_redirects=False,
        )
        assert streamed.status_code == 413
        fine = client.post("/login", data={"username": "erin", "password": "erin-password"}, follow_redirects=False)
        assert fine.status_code == 303
    assert "login_failed" not in audit_actions(settings)


def test_user_names_are_escaped_in_log_and_audit(monkeypatch, redis_url, tmp_path, caplog):
    """A user name with a newline or escape codes cannot forge log lines; the audit stores it escaped."""
    settings = console_settings(redis_url, tmp_path)
    caplog.set_level(logging.INFO, logger="launcher.console")
    evil = "mallory\nconsole.login user=admin \x1b[31m"
    with console_client(monkeypatch, settings) as client:
        assert (
            client.post("/login", data={"username": evil, "password": "x"}, follow_redirects=False).status_code == 303
        )
    lines = [r.getMessage() for r in caplog.records if "login_failed" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "\x1b" not in lines[0] and "\\n" in lines[0]
    [entry] = SessionStore(rclient(settings), settings).audit(limit=5)
    assert entry.action == "login_failed" and "\n" not in entry.user and "\x1b" not in entry.user


def test_console_log_gets_login_events_as_started(redis_url, tmp_path):
    """The console process, started like scripts/start.sh does, writes login events to its log, names escaped."""
    settings: Settings = console_settings(redis_url, tmp_path, console_url="http://127.0.0.1")
    UserStore(settings.users_file).set_user("erin", Role.RESEARCHER, "erin-password")
    console, url = start_console(settings, tmp_path, LAUNCHER_USERS_FILE=str(settings.users_file))
    try:
        bad = httpx.post(f"{url}/login", data={"username": "erin\x1b[2J", "password": "nope"}, timeout=30)
        assert bad.status_code == 303 and bad.headers["location"].startswith("/login?failed=1")
        good = httpx.post(f"{url}/login", data={"username": "erin", "password": "erin-password"}, timeout=30)
        assert good.status_code == 303 and COOKIE in good.cookies
        wait_for(lambda: "console.login user='erin'" in console.log.read_text(errors="replace"), 10, "the login line")
        text = console.log.read_text(errors="replace")
        assert "console.login_failed user='erin\\x1b[2J'" in text and "erin\x1b" not in text
        assert "erin-password" not in text and "nope" not in text
    finally:
        console.stop()
    assert audit_actions(settings, "erin") == ["login"]
    assert "login_failed" in audit_actions(settings)
