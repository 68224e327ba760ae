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
import socketserver
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from technician_ops.channel import ENV_RUN_ID, ENV_SOCKET, ENV_STATE_DIR, ENV_TOKEN

__all__ = ["ENV_RUN_ID", "ENV_STATE_DIR", "LOCAL", "ControlServer", "Handler"]

# How often serve_forever checks for shutdown: the default 0.5 s made every run wait ~0.25 s at its end.
_POLL = 0.02

Handler = Callable[[dict[str, Any]], dict[str, Any]]
LOCAL = "local"  # the participant that is the controller's own execution
NODE_OPS = frozenset({"secret", "gate", "environ"})  # what an execution node's tasks may ask (environ: nothing)


class ControlServer:
    def __init__(self, handlers: dict[str, Handler]) -> None:
        self.handlers = handlers
        self.token = secrets.token_hex(16)
        # Who a request comes from, by its token: the controller's own execution ("local"), or an
        # execution node, whose token reaches it through the forwarded socket (``participant_token``).
        self._tokens = {self.token: LOCAL}
        self._dir = Path(tempfile.mkdtemp(prefix="technician-ops-"))
        os.chmod(self._dir, 0o700)
        self.path = self._dir / "control.sock"
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    def participant_token(self, name: str) -> str:
        """A token of its own for execution node ``name``: its requests carry ``participant: name``, and may
        only ask what a node's tasks need (``NODE_OPS``: never an approval, never to add to the record)."""
        token = secrets.token_hex(16)
        self._tokens[token] = name
        return token

    @property
    def env(self) -> dict[str, str]:
        return {ENV_SOCKET: str(self.path), ENV_TOKEN: self.token}

    def __enter__(self) -> "ControlServer":
        outer = self

        class _Request(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.connection.settimeout(30)  # a client that never finishes its line holds no thread
                try:
                    line = self.rfile.readline(1 << 20)
                except OSError:
                    return
                self.connection.settimeout(None)  # the answer may take long: a gate waits for every participant
                try:
                    request = json.loads(line)
                    who = outer._tokens.get(str(request.get("token")))
                    if who is None:
                        reply: dict[str, Any] = {"ok": False, "error": "bad token"}
                    elif who != LOCAL and request.get("op") not in NODE_OPS:
                        reply = {"ok": False, "error": f"op {request.get('op')!r} is not for an execution node"}
                    else:
                        request["participant"] = who  # never what the request says of itself
                        handler = outer.handlers.get(request.get("op", ""))
                        reply = handler(request) if handler else {"ok": False, "error": f"unknown op {request.get('op')!r}"}
                except Exception as exc:  # a bad request must not kill the run
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                self.wfile.write(json.dumps(reply).encode() + b"\n")

        self._server = socketserver.ThreadingUnixStreamServer(str(self.path), _Request)
        # The end of a run never waits on a request a node left hanging.
        self._server.daemon_threads = True
        self._server.block_on_close = False
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
