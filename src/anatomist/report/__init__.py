"""Reports a person can look at: feature dashboards and run reports as static pages (file://, no network).

Heavy imports (torch models, matplotlib) stay in the submodules; `build_report` only reads files.
"""

from anatomist.report.dashboard import Source, dashboard_pass, write_dashboard
from anatomist.report.site import build_report

__all__ = ["Source", "build_report", "dashboard_pass", "write_dashboard"]
