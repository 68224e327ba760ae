"""The fenced code blocks of a runbook body: every step is one.

CommonMark decides what is a fence, and markdown-it-py implements it.  But
importing markdown-it-py costs about 40 ms, a quarter of ``lint`` of one
runbook (issue 9), and most runbooks are plain: their fences start at column
0, outside any list, quote or HTML.  Such a document needs no parser: a fence
is a line starting with three backticks or tildes, and it runs to the first
line that closes it.  ``fences`` scans plain documents line by line and hands
every other document to markdown-it-py.  The scan gives up (and the parser
decides) at the first line it cannot place with certainty:

- a fence marker anywhere but at column 0 (an indented, quoted or listed
  fence, an indented code block, a code span of three backticks);
- a line starting with ``<`` (an HTML block can swallow the fences after
  it), except an HTML comment at column 0, which runs to the line holding
  ``-->``;
- a backtick in a backtick fence's info string (not a fence at all).

tests/unit/test_fences.py checks the two paths give the same blocks on every
runbook in the repository, on hand-written edge cases and on thousands of
generated documents.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple


class Fence(NamedTuple):
    """One fenced block, as markdown-it-py's fence token has it."""

    line: int  # 0-based line of the opening fence
    info: str  # the text after the opening marker, untrimmed
    content: str  # the lines between the fences, each ending in a newline


def fences(text: str) -> list[Fence]:
    """Every fenced block of a Markdown document (nested ones too), in order."""
    # markdown-it-py's normalize rule, applied before either path.
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\0", "\ufffd")
    scanned = _scan(text)
    return scanned if scanned is not None else _parse(text)


def _scan(text: str) -> list[Fence] | None:
    """The fences of a plain document; None when the document is not plain."""
    last_has_newline = text.endswith("\n")
    lines = text.split("\n")
    if last_has_newline:
        lines.pop()  # "a\n" is one line, as markdown-it-py counts them
    found: list[Fence] = []
    i, count = 0, len(lines)
    while i < count:
        line = lines[i]
        if line.startswith(("```", "~~~")):
            marker = line[0]
            width = len(line) - len(line.lstrip(marker))
            info = line[width:]
            if marker == "`" and "`" in info:
                return None
            end = i + 1
            while end < count and not _closes(lines[end], marker, width):
                end += 1
            body = lines[i + 1:end]
            content = "\n".join(body)
            if body and (end < count or last_has_newline):
                content += "\n"
            found.append(Fence(i, info, content))
            i = end + 1
            continue
        if "```" in line or "~~~" in line:
            return None
        if line.lstrip(" \t").startswith("<"):
            if not line.startswith("<!--"):
                return None
            while i < count and "-->" not in lines[i]:
                i += 1
        i += 1
    return found


def _closes(line: str, marker: str, width: int) -> bool:
    """Whether ``line`` closes a fence of ``width`` ``marker`` characters opened at column 0."""
    column = 0
    start = 0
    for ch in line:
        if ch == " ":
            column += 1
        elif ch == "\t":
            column += 4 - column % 4
        else:
            break
        start += 1
    if column > 3:
        return False  # indented code inside the fence, not its end
    rest = line[start:]
    run = len(rest) - len(rest.lstrip(marker))
    return run >= width and not rest[run:].strip(" \t")


def _parse(text: str) -> list[Fence]:
    return [Fence(token.map[0], token.info, token.content)
            for token in _markdown().parse(text) if token.type == "fence" and token.map]


@functools.lru_cache(maxsize=1)
def _markdown() -> Any:
    """One CommonMark parser per process: building one costs more than parsing a runbook.

    Only block structure matters (a step is a fence token): inline parsing of
    the prose, two thirds of the parse time, is switched off.
    """
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").disable(["inline", "text_join"])
