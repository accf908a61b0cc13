"""The docs keep up with the code: every setting documented, the README's commands are the real ones."""

from pathlib import Path

from launcher.settings import REPO_ROOT, Settings


def test_every_setting_is_documented():
    """Each settings field appears as LAUNCHER_<NAME> in docs/configuration.md."""
    text = (REPO_ROOT / "docs" / "configuration.md").read_text()
    missing = [name for name in Settings.model_fields if f"`LAUNCHER_{name.upper()}`" not in text]
    assert missing == []


def test_readme_test_command_is_what_ci_runs():
    """The README's test command is the one .ci/run executes, and it is the one that requires Docker."""
    readme = (REPO_ROOT / "README.md").read_text()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "make test" in readme and "\nmake test\n" in ci
    assert "LAUNCHER_REQUIRE_DOCKER=1" in makefile


def test_public_development_secrets_are_refused():
    """The former development defaults of the cookie key and Flower password are refused in every mode."""
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="LAUNCHER_COOKIE_SECRET is a public development value"):
        Settings(cookie_secret="dev-cookie-secret-change-me")
    with pytest.raises(ValidationError, match="LAUNCHER_FLOWER_PASSWORD is a public development value"):
        Settings(mode="production", cookie_secret="x" * 32, flower_password="flower-dev-password")
    ok = Settings(mode="production", cookie_secret="x" * 32, flower_password="y" * 20, redis_password="z" * 20)
    assert ok.mode == "production"
    assert Path(ok.templates_dir).is_dir()


def test_entry_point_needs_tls_outside_localhost():
    """A notebook domain other than *.localhost must be served over https: its __Host- cookies need TLS."""
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="must be https"):
        Settings(public_url="http://nb.example.org:8080")
    assert Settings(public_url="https://nb.example.org").session_origin("abcdefabcdef") == "https://abcdefabcdef.nb.example.org"
    assert Settings(public_url="http://nb.localhost:8080").notebook_domain == "nb.localhost"
