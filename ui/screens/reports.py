"""Reports page: run a template unattended, see its record, results and artifacts, reproduce, compare, schedule."""

from launcher.models import Permission
from ui import reports_view
from ui.context import get_report_service, page_context

service, actor = page_context(Permission.LAUNCH_NOTEBOOKS)
reports_view.reports(service, get_report_service(), actor)
