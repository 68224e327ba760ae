"""The ``vault`` step kind: rotate a secret in Vault/OpenBao, apply and verify it, restore the old version as its undo."""
