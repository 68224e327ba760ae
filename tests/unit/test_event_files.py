"""executor._EventFiles: the event file ansible-runner would write, written once, by us."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from technician_ops.engine.executor import StepTracker, _EventFiles
from technician_ops.engine.redact import Redactor
from technician_ops.events import Bus


def test_each_event_is_written_once_private_and_whole(tmp_path: Path) -> None:
    tracker = StepTracker(Bus([]), {"s": "s"}, "run", Redactor([]))
    files = _EventFiles(tracker)
    event = {"uuid": "u-1", "counter": 7, "event": "playbook_on_play_start", "event_data": {"play": "s", "name": "s"},
             "stdout": "é" * 10}
    assert files.handle(dict(event)) is True  # not set up: ansible-runner writes it, as before
    files.directory = tmp_path
    assert files.handle(dict(event)) is False  # written here: ansible-runner must not write it again
    path = tmp_path / "7-u-1.json"
    assert json.loads(path.read_text(encoding="utf-8")) == event
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["7-u-1.json"]
    assert tracker.order == ["s"]  # the tracker saw it first
    assert files.handle({"event": "verbose", "stdout": "x"}) is True  # no uuid: as ansible-runner decides


def test_a_directory_gone_leaves_the_writing_to_ansible_runner(tmp_path: Path) -> None:
    files = _EventFiles(StepTracker(Bus([]), {}, "run", Redactor([])))
    files.directory = tmp_path / "missing"
    assert files.handle({"uuid": "u", "counter": 1, "event": "x"}) is True
