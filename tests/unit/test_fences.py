"""The line scan of plain runbooks must find exactly the fences CommonMark (markdown-it-py) finds."""

from __future__ import annotations

import pathlib
import random

import pytest

from technician_ops.runbook.fences import Fence, _parse, _scan, fences

REPO = pathlib.Path(__file__).resolve().parents[2]


def same_as_commonmark(text: str) -> list[Fence] | None:
    """The scan's fences, after checking them against the parser's; None when the scan gave up."""
    scanned = _scan(text)
    if scanned is not None:
        assert scanned == _parse(text), text
    return scanned


def repo_markdown() -> list[pathlib.Path]:
    """The Markdown files of the checkout, not of venvs, run state or bench results."""
    def ours(path: pathlib.Path) -> bool:
        parts = path.relative_to(REPO).parts
        return not any(part.startswith(".") for part in parts) and parts[:2] != ("bench", "results")

    return sorted(p for p in REPO.rglob("*.md") if ours(p))


@pytest.mark.parametrize("path", repo_markdown(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_markdown_file_in_the_repo(path: pathlib.Path) -> None:
    same_as_commonmark(path.read_text(encoding="utf-8"))


def test_the_bundled_runbooks_take_the_scan() -> None:
    runbooks = sorted((REPO / "runbooks").glob("*.md"))
    assert runbooks
    for path in runbooks:
        found = same_as_commonmark(path.read_text(encoding="utf-8"))
        assert found, f"{path.name}: expected the scan to read it, and to find its steps"


PLAIN = [
    "",
    "no fences at all\n",
    "```yaml {name=a}\nx: 1\n```\n",
    "```yaml\nx: 1\n```",  # no newline at the end
    "```yaml\nunclosed\n",
    "```yaml\nunclosed",  # unclosed, no final newline
    "```\n```\n",  # empty block
    "```\n",
    "~~~sh\necho ```\n~~~\n",
    "````md\n```yaml\ninner\n```\n````\n",  # a longer fence holds a shorter one
    "```\nx\n`````\nafter\n",  # closed by a longer run
    "```\nx\n   ```\n",  # closing fence indented 3
    "```\nx\n    ```\nstill inside\n```\n",  # indented 4: content, not the end
    "```\nx\n\t```\n```\n",  # a tab is 4 columns
    "```\nx\n``` \t \n",  # trailing blanks after the closing fence
    "```\nx\n``` y\n```\n",  # text after the marker: not a close
    "~~~\nx\n```\n~~~\n",  # other marker does not close
    "```  yaml   {name=a kind=shell}  \nx\n```\n",
    "~~~ info with `backticks`\nx\n~~~\n",
    "para\n```yaml\ninterrupts a paragraph\n```\n",
    "- item\n```yaml\nafter a list item\n```\n",
    "- item\n  continued\n```yaml\nafter a list item\n```\n",
    "> quote\n```yaml\nafter a quote\n```\n",
    "# Heading\n\n```yaml\nx\n```\n\ntext\n\n```sh {name=b}\necho\n```\n",
    "<!-- a comment -->\n```yaml\nx\n```\n",
    "<!--\n```yaml\nswallowed by the comment\n```\n-->\n```sh\nafter\n```\n",
    "<!-->\n```yaml\nx\n```\n",
    "<!--\nnever closed\n```yaml\nx\n```\n",
    "text\n<!-- interrupts -->\n```\nx\n```\n",
    "```\nwindows\r\nline\r\n```\r\n",
    "```\nold mac\rline\r```\r",
    "```\nnul\0byte\n```\n",
    "```\ncafé ☃ ü\n```\n",
    "\n\n\n```yaml\nafter blank front-matter lines\n```\n",
    "```yaml\n\tx: 1\n  \ty: 2\n```\n",
    "    indented code without markers\n\n```\nx\n```\n",
    "setext\n===\n```\nx\n```\n---\n",
    "[ref]: /url\n```\nx\n```\n",
]


@pytest.mark.parametrize("text", PLAIN)
def test_plain_documents_are_scanned_like_commonmark(text: str) -> None:
    normalized = text.replace("\r\n", "\n").replace("\r", "\n").replace("\0", "\ufffd")
    assert same_as_commonmark(normalized) is not None
    assert fences(text) == _parse(normalized)


NOT_PLAIN = [
    "  ```yaml\nindented opener\n  ```\n",
    "    ```\nindented code\n",
    "- ```yaml\n  in a list\n  ```\n",
    "- item\n\n  ```yaml\n  in a list item\n  ```\n",
    "> ```yaml\n> quoted\n> ```\n",
    "<div>\n```yaml\nin an HTML block\n```\n</div>\n",
    "<details>\n<summary>s</summary>\n\n```yaml\nx\n```\n</details>\n",
    "  <!--\n```yaml\nx\n```\n-->\n",
    "```a`b\nnot a fence\n```\n",
    "text with ```three``` backticks\n```\nx\n```\n",
    "<https://example.com> an autolink\n",
]


@pytest.mark.parametrize("text", NOT_PLAIN)
def test_what_the_scan_cannot_place_goes_to_the_parser(text: str) -> None:
    assert _scan(text) is None
    assert fences(text) == _parse(text)


# Lines a generated document is made of: markers of both kinds and several
# widths, at and off column 0, inside lists and quotes, HTML, tabs, prose.
PIECES = [
    "```", "````", "```yaml", "```yaml {name=x}", "~~~", "~~~~", "~~~ sh", "``` `", "```` x",
    " ```", "   ```", "    ```", "\t```", "   ~~~", "```  ", "``` \t", "`````",
    "- item", "- ```", "  ```", "1. item", "> quote", "> ```", ">", "* ```yaml",
    "<!--", "-->", "<!-- c -->", "a --> b", "<div>", "</div>", "<pre>", "  <!--",
    "", "", "", "text", "x: 1", "    code", "\tcode", "# heading", "---", "===", "[r]: /u",
    "word ``` word", "~~~~~~~~", "  text",
]


def test_generated_documents() -> None:
    rng = random.Random(20261126)
    scanned = 0
    for _ in range(3000):
        text = "\n".join(rng.choice(PIECES) for _ in range(rng.randint(1, 14)))
        if rng.random() < 0.5:
            text += "\n"
        if same_as_commonmark(text) is not None:
            scanned += 1
    assert scanned > 500  # enough of them take the scan for the comparison to mean something
