"""What of the controller's environment an Ansible execution gets (engine/environ.py)."""

from __future__ import annotations

from technician_ops.engine.environ import split


def test_credentials_and_the_tools_own_variables_are_withheld_from_the_execution() -> None:
    controller = {
        "PATH": "/usr/bin", "HOME": "/root", "LANG": "C.UTF-8", "SSH_AUTH_SOCK": "/tmp/agent", "KUBECONFIG": "/k",
        "ANSIBLE_ROLES_PATH": "/roles", "PGHOST": "db", "http_proxy": "http://proxy:3128",
        "VAULT_TOKEN": "s.x", "VAULT_ADDR": "https://vault", "AWS_SECRET_ACCESS_KEY": "k", "GITHUB_TOKEN": "g",
        "DB_PASSWORD": "p", "API_KEY": "a", "PGPASSWORD": "pw", "TF_VAR_db_password": "t",
        "TECHNICIAN_OPS_PARAM_TOKEN": "secret", "TECHNICIAN_OPS_AUDIT_URL": "postgresql://u:pw@h/db",
    }
    ours = {"TECHNICIAN_OPS_CONTROL_SOCKET": "/run/s", "TECHNICIAN_OPS_RUN_ID": "r1", "ANSIBLE_CONFIG": "/x/ansible.cfg"}
    child, held = split(controller, ours)
    assert set(child) == {"PATH", "HOME", "LANG", "SSH_AUTH_SOCK", "KUBECONFIG", "ANSIBLE_ROLES_PATH", "PGHOST",
                          "http_proxy", *ours}
    # our plugins get the credentials over the control channel; the tool's own settings go nowhere
    assert set(held) == {"VAULT_TOKEN", "VAULT_ADDR", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "DB_PASSWORD", "API_KEY",
                         "PGPASSWORD", "TF_VAR_db_password"}
