"""The client side of the control channel, for our Ansible plugins (the server is ``engine/control.py``).

A plugin inside ansible-playbook asks the technician-ops process for what
must never be written to disk (a secret's value) and for what only it can
do (ask the operator, add an artifact to the record): one JSON line in, one
JSON line out, over a Unix socket named in the environment with a per-run token.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

ENV_SOCKET = "TECHNICIAN_OPS_CONTROL_SOCKET"
ENV_TOKEN = "TECHNICIAN_OPS_CONTROL_TOKEN"
ENV_RUN_ID = "TECHNICIAN_OPS_RUN_ID"
ENV_STATE_DIR = "TECHNICIAN_OPS_STATE_DIR"
NOT_UNDER_RUN = ("not running under technician-ops: TECHNICIAN_OPS_STATE_DIR/RUN_ID are not set "
                 "(run this playbook with 'technician-ops run')")


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
