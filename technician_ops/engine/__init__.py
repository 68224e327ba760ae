"""The engine: one run lifecycle (``session``) and what it drives: ansible-runner, the saga, the control channel."""
