"""Input that ends up in paths, names and labels is checked before anything happens."""

import pytest

from launcher.errors import InvalidRequest
from launcher.settings import Settings
from launcher.validation import available_templates, resolve_template, safe_child, validate_user_id


@pytest.mark.parametrize("user", ["alice", "a", "bob.smith", "r2-d2", "ann_lee", "ann@example.com", "0day"])
def test_valid_user_ids(user):
    """Ordinary user ids pass unchanged."""
    assert validate_user_id(user) == user


@pytest.mark.parametrize(
    "user",
    ["", "../x", "a/b", "..", ".", ".hidden", "a..b", "x" * 300, "Alice", "a b", "a\0b", "a\\b", "-rf", None, 42],
)
def test_invalid_user_ids(user):
    """Path tricks, empty, overlong, upper case and non-strings are refused with a clear message."""
    with pytest.raises(InvalidRequest, match="invalid user id"):
        validate_user_id(user)


def test_templates_resolve_by_name_only():
    """Known names resolve inside the templates folder; unknown names and path tricks are refused."""
    tdir = Settings().templates_dir
    assert available_templates(tdir) == ["alpha_research", "backtest_review", "factor_analysis"]
    assert resolve_template(tdir, "alpha_research") == tdir.resolve() / "alpha_research.ipynb"
    with pytest.raises(InvalidRequest, match="unknown template 'nope'; available: alpha_research"):
        resolve_template(tdir, "nope")
    for bad in ["../alpha_research", "../../etc/passwd", "alpha_research.ipynb", "", "/etc/passwd", "Alpha"]:
        with pytest.raises(InvalidRequest, match="invalid template name"):
            resolve_template(tdir, bad)


def test_safe_child_refuses_escapes_and_symlinks(tmp_path):
    """A child path must stay directly inside its base and must not be a symlink."""
    (tmp_path / "link").symlink_to("/etc")
    for bad in ["..", ".", "a/b", "link", ""]:
        with pytest.raises(InvalidRequest):
            safe_child(tmp_path, bad)
    assert safe_child(tmp_path, "ok") == tmp_path.resolve() / "ok"
