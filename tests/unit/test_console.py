"""The terminal view writes its per-event lines without rich's markup path: same bytes, any text."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.text import Text

from technician_ops.outputs.console import TextView
from technician_ops.events import Event, Kind

EVENTS = [
    (Kind.RUN_START, {"runbook": "demo [x]", "run_id": "r1", "check": True}),
    (Kind.STEP_START, {"step": "s1", "kind": "ansible", "hosts": "web[0]"}),
    (Kind.TASK_START, {"task": "do [b]x[/b] :smile:"}),
    (Kind.HOST_RESULT, {"host": "h1", "status": "ok", "duration": 0.12}),
    (Kind.HOST_RESULT, {"host": "h2", "status": "failed", "duration": 1.0, "error": "boom [red]\r\x07"}),
    (Kind.STEP_START, {"step": "s1", "kind": None, "phase": "rollback"}),
    (Kind.APPROVAL, {"step": "s2", "approved": False, "by": "me"}),
    (Kind.ROLLBACK_START, {"steps": ["a", "b"]}),
    (Kind.ROLLBACK_END, {"failures": [{"step": "a", "host": "h", "error": "e"}]}),
    (Kind.NOTICE, {"message": "note [/]", "level": "warning"}),
    (Kind.ARTIFACT, {"type": "tf", "summary": "x"}),
]

PLAIN = """\
▶ demo [x] run r1 (check mode: nothing will change)
▸ s1 (ansible) on web[0]
    … do [b]x[/b] :smile:
    ✔ h1 ok 0.1s
    ✖ h2 failed 1.0s: boom [red]
↺ undo s1 (step)
    approval of s2: NOT approved (me)
↺ rolling back in reverse order: a, b
  undo of a failed on h: e
note [/]
    recorded tf: x
"""


def _render(console: Console) -> str:
    view = TextView(console)
    for kind, data in EVENTS:
        view.handle(Event(kind, data))
    return console.file.getvalue() if not console.record else console.export_text()


@pytest.mark.parametrize("record", [False, True], ids=["direct", "through-rich"])
def test_plain_output_is_the_text_verbatim(record: bool) -> None:
    """Markup-like text, emoji codes and control characters are shown as rich's Text would show them."""
    assert _render(Console(file=io.StringIO(), force_terminal=False, record=record, width=200)) == PLAIN


def test_terminal_output_matches_rich() -> None:
    """With colour, each line is byte-for-byte what rich prints for the same styled text."""
    fast = _render(Console(file=io.StringIO(), force_terminal=True, color_system="truecolor", width=200))
    ref = Console(file=io.StringIO(), force_terminal=True, color_system="truecolor", width=200, highlight=False)
    ref.print(Text.assemble(("    ", ""), ("✔ h1", "green"), (" ok ", ""), ("0.1s", "dim")))
    assert ref.file.getvalue() in fast
    assert "\x1b[31m✖ h2\x1b[0m failed \x1b[2m1.0s\x1b[0m: boom [red]\n" in fast
