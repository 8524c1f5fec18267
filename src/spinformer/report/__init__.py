"""The HTML report: every registered experiment with a ``section``, rendered self-contained.

The page is organised by the section registry (:mod:`spinformer.report.sections`): each section
has a title, a paragraph naming the published claim it makes executable, and an availability check;
experiments join a section through the title they register with.

``build_report`` runs each experiment with its ``report_config`` (CPU-sized defaults), renders
its description, headline metrics, tables and figures (inline PNG), and writes
``<out>/index.html`` and ``<out>/metrics.json`` through :mod:`spinformer._io`: each file is staged
next to its target and renamed into place, so an interrupted build leaves the previous report
untouched; spinformer writes only into a new or empty directory or one it wrote before (it carries
a manifest), and removes nothing it did not write; concurrent builds into one directory are
serialised by a lock on it.
"""

from spinformer.report.builder import SCALES, ReportResult, build_report, render_html
from spinformer.report.sections import (
    ReportSection,
    get_section,
    list_sections,
    register_section,
)

__all__ = [
    "SCALES",
    "ReportResult",
    "ReportSection",
    "build_report",
    "get_section",
    "list_sections",
    "register_section",
    "render_html",
]
