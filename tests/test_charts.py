"""Charts show in JupyterLab (the kernel's inline backend), and headless Python still draws to files."""

from __future__ import annotations

import base64

import pytest

from launcher.models import SessionStatus
from tests.helpers import Kernel
from tests.stack import run_in_notebook_image
from tests.web import opened

pytestmark = pytest.mark.docker

PNG = b"\x89PNG\r\n\x1a\n"


def _images(messages: list[dict], msg_id_of: dict) -> list[bytes]:
    """The PNG images a cell displayed: display_data messages answering that cell's execute request."""
    return [
        base64.b64decode(m["content"]["data"]["image/png"])
        for m in messages
        if m.get("msg_type", m["header"]["msg_type"]) == "display_data"
        and m.get("parent_header", {}).get("msg_id") == msg_id_of["msg_id"]
        and "image/png" in m["content"].get("data", {})
    ]


def _request_id(messages: list[dict]) -> dict:
    """The execute request's id, from the execute_reply that answered it."""
    reply = next(m for m in messages if m.get("msg_type", m["header"]["msg_type"]) == "execute_reply")
    return {"msg_id": reply["parent_header"]["msg_id"]}


def test_plot_cell_shows_a_png_in_a_real_session(clean_stack):
    """In a launched notebook, plt.show() displays a PNG (inline backend), and research.plots.show displays one."""
    st = clean_stack
    user = "charts-erin"
    actor = st.actor(user)
    session = st.service.wait(actor, st.service.launch(actor, "alpha_research").id, {SessionStatus.RUNNING}, 120)
    assert session.status == SessionStatus.RUNNING, session.error
    client = opened(st, session.id, user)
    kernel = Kernel(client)
    try:
        plain = kernel.execute(
            "import matplotlib, matplotlib.pyplot as plt\n"
            "print(matplotlib.get_backend())\n"
            "fig, ax = plt.subplots(figsize=(4, 2))\n"
            "ax.plot([1, 3, 2])\n"
            "plt.show()\n",
            timeout=90,
        )
        assert plain.error is None, plain.error
        assert "inline" in plain.stdout, plain.stdout
        [image] = _images(plain.messages, _request_id(plain.messages))
        assert image.startswith(PNG) and len(image) > 1000

        helper = kernel.execute(
            "from research.plots import show\n"
            "fig, ax = plt.subplots(figsize=(4, 2))\n"
            "ax.bar(['a', 'b'], [1, 2])\n"
            "show(fig, '/home/jovyan/work/bar.png')\n",
            timeout=60,
        )
        assert helper.error is None, helper.error
        [shown] = _images(helper.messages, _request_id(helper.messages))  # once, not again at the cell's end
        assert shown.startswith(PNG)
        assert (st.settings.workspaces_dir / user / "bar.png").read_bytes() == shown
    finally:
        kernel.close()
        client.close()


def test_headless_python_draws_with_agg(tmp_path):
    """A plain Python process in the image (no kernel, no display) uses Agg and writes the figure file."""
    from tests.conftest import docker_or_skip

    docker_or_skip()
    tmp_path.chmod(0o777)
    code = (
        "import matplotlib, matplotlib.pyplot as plt\n"
        "plt.plot([1, 2])\n"
        "plt.savefig('/out/line.png')\n"
        "plt.show()\n"
        "print(matplotlib.get_backend())\n"
    )
    done = run_in_notebook_image(["python3", "-c", code], {tmp_path: "/out"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().lower() == "agg"
    assert (tmp_path / "line.png").read_bytes().startswith(PNG)
