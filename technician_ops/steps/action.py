"""The shared preamble of technician-ops' Ansible action plugins (imported by them only: it imports ansible).

Every one of them runs on the controller without a connection and reports
what it did as ``artifact`` events over the control channel.  A kind's own
plugins live in its package (``steps/<kind>/action/``); ``plan/files.py``
puts every such directory on Ansible's ``action_plugins`` path.
"""

from __future__ import annotations

import os
from typing import Any

from ansible.plugins.action import ActionBase

from technician_ops.channel import NOT_UNDER_RUN, call, run_context

__all__ = ["NOT_UNDER_RUN", "ControllerAction", "call", "run_context"]


class ControllerAction(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _restore_credentials()

    def emit(self, data: dict[str, Any], error: type[Exception] = RuntimeError) -> None:
        """Add an artifact to the run's record; ``error`` is raised when technician-ops refuses it."""
        reply = call("emit", kind="artifact", data=data)
        if not reply.get("ok"):
            raise error(f"technician-ops refused the record: {reply.get('error')}")


_restored = False


def _restore_credentials() -> None:
    """The credentials technician-ops withheld from the execution (VAULT_TOKEN, cloud keys), into this
    worker process only: it runs one task, ours, on the controller (``engine/environ.py``)."""
    global _restored
    if _restored:
        return
    _restored = True
    try:
        reply = call("environ")
    except (OSError, RuntimeError, ValueError):
        return  # not under technician-ops: the plugin says so when it needs the run
    if reply.get("ok"):
        os.environ.update({str(k): str(v) for k, v in (reply.get("values") or {}).items()})
