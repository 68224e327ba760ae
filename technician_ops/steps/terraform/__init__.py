"""The ``terraform`` step kind: a module applied on the controller, ``rollback: previous`` as its undo."""
