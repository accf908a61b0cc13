"""The platform's research library, mounted read-only in every notebook and importable as ``research``."""

from research.data import data_root, read_crsp_daily

__all__ = ["data_root", "read_crsp_daily"]
