"""``report RUN_ID``: a run's record and runbook (report.py) rendered as Markdown or one HTML file.

Its own module, above the model and both renderings, so that neither rendering imports this choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from technician_ops.outputs.report import FORMATS, build, read_runbook


def render(record: dict[str, Any], fmt: str = "md", *, project_root: Path | None = None) -> str:
    """The report of one run as Markdown (``md``) or one self-contained HTML file (``html``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}")
    report = build(record, read_runbook(record, project_root))
    if fmt == "html":
        from technician_ops.outputs.report_html import render_html

        return render_html(report)
    from technician_ops.outputs.report_md import render_markdown

    return render_markdown(report)
