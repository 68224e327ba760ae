"""The HTML rendering of a run report (``report --format html``): one self-contained file.

Inline CSS and inline SVG only: no script, font, image or stylesheet is fetched, and a
Content-Security-Policy of ``default-src 'none'`` says so to the browser as well, so the file
reads the same offline, attached to a ticket or opened on a phone.  The page is built by jinja2
with autoescape on (a value can never become markup); the runbook's prose is rendered by
markdown-it-py with raw HTML off, images shown as links (an ``<img>`` would be a request) and
each step's fence replaced by the step's card: its block, then what it did on each host.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from technician_ops.outputs.report import Doc, Report, StepView

TEMPLATES = Path(__file__).resolve().parent / "templates"


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2

    from technician_ops.outputs.report import secret_versions, seconds

    # ChainableUndefined: a crafted or older record that lacks a field renders it empty, never fails.
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
    env.globals.update(seconds=seconds, secret_versions=secret_versions)
    return env


def render_html(r: Report) -> str:
    from markupsafe import Markup

    env = _environment()
    cards = env.get_template("report_cards.html.j2").module
    body = Markup(_body(r, r.doc, cards)) if r.doc is not None else None  # markdown-it's own escaped HTML
    return str(env.get_template("report.html.j2").render(r=r, body=body, ticks=_ticks(r.span)))


def _ticks(span: float) -> list[tuple[float, str]]:
    """Gridlines at round seconds: about four across the run."""
    if span <= 0:
        return []
    step = next((s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600) if span / s <= 5), 3600 * 6)
    return [(round(t / span * 100, 3), f"{t}s" if t < 120 else f"{t // 60}m") for t in range(step, int(span) + 1, step)
            if t / span < 0.97]


def _body(r: Report, doc: Doc, cards: Any) -> str:
    """The runbook's body as HTML; every fence that is a step, or a step's undo, becomes its card."""
    from markdown_it.renderer import RendererHTML

    from technician_ops.outputs.report import markdown_parser

    md = markdown_parser()

    def fence(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        tok = tokens[idx]
        block = doc.blocks.get(tok.map[0]) if tok.map else None
        if block is not None and block.step is not None:
            step = r.by_name.get(block.step)
            if step is not None:
                return str(cards.step_card(step, block.info, tok.content))
        if block is not None and block.undo_of is not None:
            return str(cards.undo_block(block.undo_of, block.info, tok.content, r.undo_by_name.get(block.undo_of)))
        return str(RendererHTML.fence(self, tokens, idx, options, env))

    def image(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        tok = tokens[idx]
        alt = self.renderInlineAsText(tok.children or [], options, env)
        return str(cards.image_link(alt, tok.attrGet("src") or ""))

    md.add_render_rule("fence", fence)
    md.add_render_rule("image", image)
    tokens = doc.tokens
    for tok in tokens:
        if tok.type in ("heading_open", "heading_close") and tok.tag[:1] == "h":
            tok.tag = f"h{min(6, int(tok.tag[1:]) + 2)}"  # under the report's own headings
        for child in tok.children or []:
            if child.type == "link_open":
                child.attrSet("rel", "noopener noreferrer nofollow")
    return str(md.renderer.render(tokens, md.options, {}))

