"""Notebooks page: researchers launch, watch, open and stop their notebook."""

from launcher.models import Permission
from ui import views
from ui.context import page_context

views.notebooks(*page_context(Permission.LAUNCH_NOTEBOOKS))
