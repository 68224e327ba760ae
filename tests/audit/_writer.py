"""A separate writer process for the audit tests (run as a script, not collected).

    _writer.py sigkill URL PROJECT_ROOT          start a run, append, print its id, then hang
    _writer.py sigkill-sink URL PROJECT_ROOT N   the same through an AuditSink: N events, flush, hang
    _writer.py finish URL PROJECT_ROOT N GOFILE [CONTROLLER]
                                                 wait for GOFILE, then start+finish N runs as CONTROLLER
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

from technician_ops.audit import new_run_id, open_store
from technician_ops.events import Event, Kind


def header(run_id: str, runbook: str, controller: str = "test") -> dict[str, object]:
    from technician_ops.audit.fold import iso_utc

    return {"run_id": run_id, "runbook": runbook, "path": f"runbooks/{runbook}.md", "started_at": iso_utc(),
            "operator": {"user": "writer", "host": "test", "pid": os.getpid()},
            "origin": {"type": "terminal"}, "controller": {"name": controller, "host": "test"}, "check": False,
            "params": {}}


def main(argv: list[str]) -> int:
    mode, url, root = argv[0], argv[1] or None, pathlib.Path(argv[2])
    store = open_store(url, root)
    if mode == "sigkill":
        run_id = new_run_id()
        store.start_run(header(run_id, "killed"))
        store.append(run_id, Event(Kind.STEP_START, {"step": "promote", "kind": "ansible", "hosts": ["db2"],
                                                     "phase": "run"}))
        store.append(run_id, Event(Kind.HOST_RESULT, {"step": "promote", "host": "db2", "status": "changed",
                                                      "changed": True, "duration": 0.5, "error": None,
                                                      "phase": "run"}))
        print(run_id, flush=True)
        time.sleep(120)
        return 1
    if mode == "sigkill-sink":
        from technician_ops.audit.sink import AuditSink

        run_id = new_run_id()
        store.start_run(header(run_id, "killed"))
        sink = AuditSink(store, run_id)
        for i in range(int(argv[3])):
            sink.handle(Event(Kind.NOTICE, {"level": "info", "message": f"m{i}"}))
        sink.flush()  # durable from here: the kill must not lose any of them
        print(run_id, flush=True)
        time.sleep(120)
        return 1
    if mode == "finish":
        count, gofile = int(argv[3]), pathlib.Path(argv[4])
        controller = argv[5] if len(argv) > 5 else "test"
        deadline = time.monotonic() + 30
        while not gofile.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        for i in range(count):
            run_id = new_run_id()
            store.start_run(header(run_id, "concurrent", controller))
            store.append(run_id, Event(Kind.NOTICE, {"level": "info", "message": f"{controller} {i}"}))
            store.finish(run_id, "succeeded")
        store.close()
        print("done", flush=True)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
