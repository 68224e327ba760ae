"""Fixtures shared by every test module live in tests/support/ and are loaded here once.

A session-scoped fixture imported into two modules would be two fixtures (and
two test beds); registering the module as a plugin keeps it one.  The repo
root goes on sys.path so that ``tests.support`` and ``testbed`` import whether
or not the suite runs with PYTHONPATH set.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

pytest_plugins = ["tests.support.testbed"]
