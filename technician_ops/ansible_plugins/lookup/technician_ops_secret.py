"""Lookup plugin: a secret value, fetched from technician-ops at the moment of use.

Secrets never sit in extravars, the inventory or the playbook; a task that
uses one runs with no_log, so the value exists only in memory.
"""

from __future__ import annotations

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        from technician_ops.channel import call

        values = []
        for name in terms:
            reply = call("secret", name=name)
            if not reply.get("ok"):
                raise AnsibleError(f"technician-ops: secret {name!r}: {reply.get('error')}")
            values.append(reply["value"])
        return values
