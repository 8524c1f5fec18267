"""The HTML report: every registered experiment with a ``section``, rendered self-contained.

``build_report`` runs each experiment with its ``report_config`` (CPU-sized defaults), renders
its description, headline metrics, tables and figures (inline PNG), and writes
``<out>/index.html`` atomically: the page is built in a temporary directory and renamed into
place, so an interrupted build leaves the previous report untouched.
"""

from spinformer.report.builder import ReportResult, build_report, render_html

__all__ = ["ReportResult", "build_report", "render_html"]
