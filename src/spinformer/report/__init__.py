"""The HTML report: every registered experiment with a ``section``, rendered self-contained.

``build_report`` runs each experiment with its ``report_config`` (CPU-sized defaults), renders
its description, headline metrics, tables and figures (inline PNG), and writes
``<out>/index.html`` and ``<out>/metrics.json`` through :mod:`spinformer._io`: each file is staged
next to its target and renamed into place, so an interrupted build leaves the previous report
untouched; spinformer writes only into a new or empty directory or one it wrote before (it carries
a manifest), and removes nothing it did not write; concurrent builds into one directory are
serialised by a lock on it.
"""

from spinformer.report.builder import ReportResult, build_report, render_html

__all__ = ["ReportResult", "build_report", "render_html"]
