"""Overview page for roles that may not launch."""

from ui import views
from ui.context import page_context

views.viewer(*page_context(None))
