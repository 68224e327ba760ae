"""Action plugin: a gate between two steps of a run spread over execution nodes (docs/nodes.md).

It asks technician-ops whether this participant may go on, and waits for the answer: technician-ops
answers once every participant has reached the gate (or ended).  It takes no timeout of its own: the
run's deadline and stop are technician-ops', which answers "stop" then.
"""

from __future__ import annotations

from typing import Any

from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: Any = None, task_vars: Any = None) -> dict[str, Any]:
        from technician_ops.channel import call

        result = super().run(tmp, task_vars)
        index, phase = self._task.args.get("index"), self._task.args.get("phase")
        try:
            reply = call("gate", index=int(index), phase=str(phase))
        except (OSError, RuntimeError, ValueError) as exc:
            result.update(failed=True, msg=f"technician-ops: gate {index}: cannot reach technician-ops: {exc}")
            return result
        if reply.get("ok") and reply.get("go"):
            result.update(changed=False)
        else:
            result.update(failed=True, msg="technician-ops: stopped at the step boundary: "
                          + str(reply.get("reason") or reply.get("error") or "no answer"))
        return result
