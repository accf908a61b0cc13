"""Admin page: every session, stop one, stop all, the audit trail."""

from launcher.models import Permission
from ui import views
from ui.context import page_context

views.admin(*page_context(Permission.MANAGE_NOTEBOOKS))
