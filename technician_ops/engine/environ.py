"""What of technician-ops' environment an Ansible execution gets, and what it never does.

ansible-runner hands ``ansible-playbook`` (and so every task on a local-connection
host) the controller's whole environment, and writes it to
``artifacts/<ident>/command``.  Credentials do not go there: ``VAULT_TOKEN``, cloud
keys, anything named like a token, secret, password or key, and every
``TECHNICIAN_OPS_*`` variable (a secret parameter as ``TECHNICIAN_OPS_PARAM_*``,
the audit URL with its password, the notify URL).  They are *withheld*: technician-ops'
own controller plugins (vault, terraform, backup, db-failover) get the
credentials over the control channel when they run (``steps/action.py``); tasks never
see them and no file holds them.  A task that needs a credential gets it as a
``secret`` parameter, explicitly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# Names of credentials, whatever their prefix.
_CREDENTIAL = re.compile(r"TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|PRIVATE|API_?KEY|ACCESS_?KEY|_KEY$|^KEY_|AUTH|COOKIE|SESSION",
                         re.IGNORECASE)
# Whole families of provider settings that carry credentials among other things.
_PREFIXES = ("TECHNICIAN_OPS_", "VAULT_", "BAO_", "AWS_", "AZURE_", "ARM_", "GOOGLE_", "GCP_", "CLOUDSDK_", "TF_VAR_",
             "TF_TOKEN_", "OS_", "DIGITALOCEAN_", "HCLOUD_", "LINODE_", "SCW_", "CLOUDFLARE_")
# Needed as they are by ansible-playbook and ssh, whatever the patterns above say.
_KEEP = frozenset({"SSH_AUTH_SOCK", "PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TERM", "TMPDIR", "PWD",
                   "PYTHONPATH", "VIRTUAL_ENV"})


def withheld(name: str) -> bool:
    """Whether the variable ``name`` must not reach an Ansible execution."""
    if name in _KEEP or name.startswith("ANSIBLE_") or name.startswith("LC_"):
        return False
    return name.startswith(_PREFIXES) or bool(_CREDENTIAL.search(name))


def split(environ: Mapping[str, str], ours: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(the execution's environment, the withheld credentials) from ``environ``; ``ours`` (the control
    channel, the run id, ANSIBLE_CONFIG...) always goes to the execution."""
    child: dict[str, str] = {}
    held: dict[str, str] = {}
    for name, value in environ.items():
        if name in ours:
            child[name] = ours[name]
        elif withheld(name):
            if not name.startswith("TECHNICIAN_OPS_"):  # the tool's own settings serve no plugin
                held[name] = value
        else:
            child[name] = value
    for name, value in ours.items():
        child.setdefault(name, value)
    return child, held
