"""The web view's sign-in: its users file and Basic credentials (serve/ui.py)."""

from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace

import pytest

from technician_ops.errors import ConfigError
from technician_ops.serve.ui import basic_auth, hash_password, read_users


def _request(header: str | None) -> SimpleNamespace:
    return SimpleNamespace(headers={"Authorization": header} if header is not None else {})


def _basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


def test_users_file_signs_in_only_its_users(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(f"# on call\nalice:{hash_password('s3cret', iterations=1000)}\n")
    path.chmod(0o600)
    auth = basic_auth(read_users(path))
    assert auth(_request(_basic("alice:s3cret"))) == "alice"  # type: ignore[arg-type]
    for header in (_basic("alice:wrong"), _basic("bob:s3cret"), _basic("alice"), "Basic !!!", "Bearer s3cret", None):
        assert auth(_request(header)) is None  # type: ignore[arg-type]


def test_a_bad_users_file_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(f"alice:{hash_password('x', iterations=1000)}\nbob:plaintext\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError) as exc:
        read_users(path)
    assert f"{path}:2:" in exc.value.message
    path.write_text(f"alice:{hash_password('x', iterations=1000)}\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError) as exc:
        read_users(path)
    assert "can be read by other users" in exc.value.message
