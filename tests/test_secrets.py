"""No usable default secret: each installation generates its own, keeps them private, and nothing runs without them."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from launcher.settings import REPO_ROOT, MissingSecret, Settings

NAMES = ("LAUNCHER_COOKIE_SECRET", "LAUNCHER_FLOWER_PASSWORD", "LAUNCHER_REDIS_PASSWORD", "LAUNCHER_METRICS_TOKEN")


def _generate(file: Path) -> subprocess.CompletedProcess:
    """The generation step of scripts/start.sh (and of scripts/compose.sh up)."""
    return subprocess.run(
        [str(REPO_ROOT / "scripts" / "secrets.sh"), str(file)], capture_output=True, text=True, timeout=60
    )


def _read(file: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in file.read_text().splitlines() if "=" in line)


def test_two_fresh_starts_generate_different_private_secrets_and_keep_them(tmp_path):
    """Two fresh var/ folders get different secrets, each file mode 0600 and never printed; a later start keeps
    them, and deleting one line rotates only that secret."""
    first, second = tmp_path / "a" / "var" / "secrets.env", tmp_path / "b" / "var" / "secrets.env"
    runs = [_generate(first), _generate(second)]
    for run, file in zip(runs, (first, second), strict=True):
        assert run.returncode == 0, run.stderr
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
        values = _read(file)
        assert sorted(values) == sorted(NAMES) and all(len(v) >= 40 for v in values.values())
        assert not any(v in run.stdout + run.stderr for v in values.values())
        assert str(file) in run.stderr  # where to look is said, the values are not
    a, b = _read(first), _read(second)
    assert all(a[name] != b[name] for name in NAMES)
    assert len(set(a.values())) == len(NAMES)

    again = _generate(first)
    assert again.returncode == 0 and again.stdout == again.stderr == "" and _read(first) == a
    first.write_text("".join(f"{k}={v}\n" for k, v in a.items() if k != "LAUNCHER_COOKIE_SECRET"))
    assert _generate(first).returncode == 0
    rotated = _read(first)
    assert rotated["LAUNCHER_COOKIE_SECRET"] != a["LAUNCHER_COOKIE_SECRET"]
    assert rotated["LAUNCHER_REDIS_PASSWORD"] == a["LAUNCHER_REDIS_PASSWORD"]
    assert stat.S_IMODE(first.stat().st_mode) == 0o600


def test_the_start_and_compose_scripts_use_the_generated_secrets():
    """scripts/start.sh and scripts/compose.sh run the generation step and export its file to what they start."""
    start = (REPO_ROOT / "scripts" / "start.sh").read_text()
    assert "scripts/secrets.sh var/secrets.env" in start and "source var/secrets.env" in start
    compose = (REPO_ROOT / "scripts" / "compose.sh").read_text()
    assert 'scripts/secrets.sh "$secrets"' in compose and 'source "$secrets"' in compose


def test_an_unset_secret_cannot_be_used_and_public_values_are_refused():
    """With no cookie key or Flower password configured, reading one raises a message naming the variable
    (so nothing can sign with an empty key); the former development values are refused outright."""
    settings = Settings(_env_file=None)
    assert not len(settings.cookie_secret) and not len(settings.flower_password)
    with pytest.raises(MissingSecret, match="LAUNCHER_COOKIE_SECRET is not set"):
        settings.cookie_secret.get_secret_value()
    with pytest.raises(MissingSecret, match="LAUNCHER_COOKIE_SECRET, LAUNCHER_FLOWER_PASSWORD are not set"):
        settings.require_secrets("cookie_secret", "flower_password")
    assert settings.model_dump(mode="json")["cookie_secret"] == ""  # dumping does not trip over it
    assert Settings(cookie_secret="k" * 32).cookie_secret.get_secret_value() == "k" * 32
    for value in ("dev-cookie-secret-change-me", "flower-dev-password"):
        with pytest.raises(ValueError, match="public development value"):
            Settings(cookie_secret=value)
        with pytest.raises(ValueError, match="public development value"):
            Settings(flower_password=value)


def test_the_cli_reads_the_checkouts_secrets_and_the_environment_wins(tmp_path):
    """Settings.of_checkout() (the launcher CLI) reads var/secrets.env then var/launcher.env; the environment wins."""
    (tmp_path / "var").mkdir()
    assert _generate(tmp_path / "var" / "secrets.env").returncode == 0
    (tmp_path / "var" / "launcher.env").write_text("LAUNCHER_INSTANCE=fromfile\n")
    generated = _read(tmp_path / "var" / "secrets.env")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAUNCHER_")}
    code = (
        "import sys; from pathlib import Path; from launcher.settings import Settings;"
        "s = Settings.of_checkout(Path(sys.argv[1]));"
        "print(s.instance, s.redis_password.get_secret_value(), s.cookie_secret.get_secret_value())"
    )
    run = subprocess.run(
        ["python3", "-c", code, str(tmp_path)],
        env={**env, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [
        "fromfile",
        generated["LAUNCHER_REDIS_PASSWORD"],
        generated["LAUNCHER_COOKIE_SECRET"],
    ]
    run = subprocess.run(
        ["python3", "-c", code, str(tmp_path)],
        env={**env, "PYTHONPATH": str(REPO_ROOT), "LAUNCHER_INSTANCE": "fromenv"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.stdout.split()[0] == "fromenv"
