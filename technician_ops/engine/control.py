"""The control channel between a run's Ansible process and technician-ops.

Our action and lookup plugins run inside ansible-playbook; they ask this
process for what must never be written to disk (secret values) and for what
only it can do (ask the operator to approve).  A Unix socket in a 0700
directory plus a per-run token; one JSON line in, one JSON line out.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import socketserver
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

ENV_SOCKET = "TECHNICIAN_OPS_CONTROL_SOCKET"
ENV_TOKEN = "TECHNICIAN_OPS_CONTROL_TOKEN"
ENV_RUN_ID = "TECHNICIAN_OPS_RUN_ID"
ENV_STATE_DIR = "TECHNICIAN_OPS_STATE_DIR"
NOT_UNDER_RUN = ("not running under technician-ops: TECHNICIAN_OPS_STATE_DIR/RUN_ID are not set "
                 "(run this playbook with 'technician-ops run')")
# How often serve_forever checks for shutdown: the default 0.5 s made every run wait ~0.25 s at its end.
_POLL = 0.02

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlServer:
    def __init__(self, handlers: dict[str, Handler]) -> None:
        self.handlers = handlers
        self.token = secrets.token_hex(16)
        self._dir = Path(tempfile.mkdtemp(prefix="technician-ops-"))
        os.chmod(self._dir, 0o700)
        self.path = self._dir / "control.sock"
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def env(self) -> dict[str, str]:
        return {ENV_SOCKET: str(self.path), ENV_TOKEN: self.token}

    def __enter__(self) -> "ControlServer":
        outer = self

        class _Request(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline()
                try:
                    request = json.loads(line)
                    if request.get("token") != outer.token:
                        reply: dict[str, Any] = {"ok": False, "error": "bad token"}
                    else:
                        handler = outer.handlers.get(request.get("op", ""))
                        reply = handler(request) if handler else {"ok": False, "error": f"unknown op {request.get('op')!r}"}
                except Exception as exc:  # a bad request must not kill the run
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                self.wfile.write(json.dumps(reply).encode() + b"\n")

        self._server = socketserver.ThreadingUnixStreamServer(str(self.path), _Request)
        os.chmod(self.path, 0o600)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(_POLL,), name="technician-ops-control", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
        for p in (self.path,):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        try:
            self._dir.rmdir()
        except OSError:
            pass


def run_context() -> tuple[Path, str] | None:
    """(state dir, run id) of the run our plugins execute in, or None outside a run."""
    state_dir, run_id = os.environ.get(ENV_STATE_DIR), os.environ.get(ENV_RUN_ID)
    return (Path(state_dir), run_id) if state_dir and run_id else None


def call(op: str, **payload: Any) -> dict[str, Any]:
    """Client side, used by our Ansible plugins."""
    path, token = os.environ.get(ENV_SOCKET), os.environ.get(ENV_TOKEN)
    if not path or not token:
        raise RuntimeError("not running under technician-ops: no control socket (run this playbook with 'technician-ops run')")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(json.dumps({"op": op, "token": token, **payload}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)
