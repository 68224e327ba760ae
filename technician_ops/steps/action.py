"""The shared preamble of technician-ops' Ansible action plugins (imported by them only: it imports ansible).

Every one of them runs on the controller without a connection and reports
what it did as ``artifact`` events over the control channel.  A kind's own
plugins live in its package (``steps/<kind>/action/``); ``plan/files.py``
puts every such directory on Ansible's ``action_plugins`` path.
"""

from __future__ import annotations

from typing import Any

from ansible.plugins.action import ActionBase

from technician_ops.channel import NOT_UNDER_RUN, call, run_context

__all__ = ["NOT_UNDER_RUN", "ControllerAction", "call", "run_context"]


class ControllerAction(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def emit(self, data: dict[str, Any], error: type[Exception] = RuntimeError) -> None:
        """Add an artifact to the run's record; ``error`` is raised when technician-ops refuses it."""
        reply = call("emit", kind="artifact", data=data)
        if not reply.get("ok"):
            raise error(f"technician-ops refused the record: {reply.get('error')}")
