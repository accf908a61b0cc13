"""The platform's research library, mounted read-only in every notebook and importable as ``research``.

polars throughout; pandas only at the edge of libraries that need it (linearmodels, statsmodels).
"""

from research.data import data_root, manifest, read_crsp_daily, read_ff, read_table

__all__ = ["data_root", "manifest", "read_crsp_daily", "read_ff", "read_table"]
