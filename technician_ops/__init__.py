"""technician-ops: executable Markdown runbooks on Ansible, with rollback and an audit trail.

The Python API lives in ``technician_ops.api``; it is not imported here so
that ``technician-ops --help`` stays instant.
"""

__version__ = "0.1.0"
