"""Fixtures: one real OpenBao dev server per test session, on loopback."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import pytest

from technician_ops.steps.vault import client as vault
from tests.support.openbao import OpenBaoServer

@pytest.fixture
def root(bao_server: OpenBaoServer) -> Any:
    """An hvac client with the root token, for arranging test state."""
    return bao_server.client()


@pytest.fixture
def client_env(bao_server: OpenBaoServer, tmp_path: Path) -> dict[str, str]:
    """A clean environment for connect(): no ambient VAULT_*, a private HOME."""
    return {**bao_server.env, "HOME": str(tmp_path)}


@pytest.fixture
def client(client_env: dict[str, str]) -> vault.VaultClient:
    return vault.connect(client_env)


@pytest.fixture
def secret_path(request: pytest.FixtureRequest) -> str:
    """A KV path no other test touches."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:40]
    return f"tests/{name}-{secrets.token_hex(4)}"
