"""Action plugin: the ``approve`` step asks technician-ops for the operator's answer."""

from __future__ import annotations

from technician_ops.steps.action import ControllerAction


class ActionModule(ControllerAction):

    def run(self, tmp=None, task_vars=None):
        from technician_ops.steps.action import call

        result = super().run(tmp, task_vars)
        step = self._task.args.get("step", "")
        reply = call("ask", step=step)
        if reply.get("ok") and reply.get("approved"):
            result.update(changed=False, msg=f"approved by {reply.get('by', 'operator')}")
        else:
            result.update(failed=True, msg=reply.get("error") or f"step {step!r} was not approved")
        return result
