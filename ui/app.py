"""The console script (served by ``ui/asgi.py``): who is this, then the pages their role may see."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import streamlit as st  # noqa: E402

from launcher.models import Permission  # noqa: E402
from launcher.rbac import authorize  # noqa: E402
from ui import views  # noqa: E402
from ui.context import current_login, get_service  # noqa: E402

st.set_page_config(page_title="Research notebooks", page_icon=":material/menu_book:", layout="wide")
service = get_service()
settings = service.settings
resolved = current_login(service)  # checked against Redis and the role source on every run
actor = resolved.actor

if actor is None or resolved.login is None:
    # A navigation of one hidden page, so that an anonymous visitor is shown no page list at all.
    note = "Your access has changed: please log in again." if resolved.revoked else ""
    login_page = st.Page(lambda: views.login(settings, note=note), title="Log in", url_path="login-page")
    st.navigation([login_page], position="hidden").run()
    st.stop()

if not settings.feature_notebook_launcher:
    st.title("Research notebooks")
    st.info("The notebook launcher is switched off on this installation.")
    st.stop()

# Only the pages this role may see exist for this user (a hidden page's URL falls back to the
# default); each page checks the permission again, and the service checks it a third time.
available = []
if authorize(actor, Permission.LAUNCH_NOTEBOOKS):
    available.append(st.Page("screens/notebooks.py", title="Notebooks", icon=":material/menu_book:", default=True))
    available.append(st.Page("screens/reports.py", title="Reports", icon=":material/summarize:"))
if authorize(actor, Permission.MANAGE_NOTEBOOKS):
    available.append(st.Page("screens/admin.py", title="Admin", icon=":material/admin_panel_settings:"))
if not available:
    available.append(st.Page("screens/overview.py", title="Overview", icon=":material/visibility:", default=True))

with st.sidebar:
    st.caption(f"Signed in as **{actor.name}** ({actor.role.value})")
    views.logout_button(settings, resolved.login.id)
st.navigation(available).run()
