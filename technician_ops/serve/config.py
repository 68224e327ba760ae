"""What ``serve`` is told: where to listen, how many runs, how fast, and the secrets that guard it.

Secrets come from a file (not readable by every user) or an environment variable, never from the command
line: a command line is in the process list.  A variable is removed from the environment once read, so no
run ever sees it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from technician_ops.errors import ConfigError, UsageError
from technician_ops.project import Project

TOKEN_ENV = "TECHNICIAN_OPS_SERVE_TOKEN"
HMAC_ENV = "TECHNICIAN_OPS_SERVE_HMAC_SECRET"
MIN_SECRET = 16  # characters of a token or HMAC secret


@dataclass
class ServeConfig:
    project: Project
    host: str = "127.0.0.1"
    port: int = 9095
    workers: int = 2
    queue_size: int = 64
    rate: tuple[int, float] = (1, 300.0)
    token: bytes | None = None
    hmac_secret: bytes | None = None
    notify_url: str | None = None
    audit_url: str | None = None
    drain_timeout: float = 60.0
    kill_grace: float = 30.0
    max_body: int = 1024 * 1024
    python: str = field(default_factory=lambda: sys.executable)

    def check(self) -> None:
        if self.workers < 1 or self.queue_size < 1:
            raise UsageError("--workers and --queue-size must be at least 1")
        if not is_loopback(self.host) and self.token is None and self.hmac_secret is None:
            raise ConfigError(f"refusing to listen on {self.host} without authentication: anyone who reaches it "
                              "could start runbooks",
                              hint=f"give --token-file FILE (or {TOKEN_ENV}) and configure Alertmanager's "
                                   "http_config.authorization.credentials_file with the same token; or bind to 127.0.0.1")


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--bind {text!r}: write HOST:PORT, e.g. 127.0.0.1:9095")
    return host.strip("[]"), int(port)


def parse_rate(text: str) -> tuple[int, float]:
    """``N/PERIOD``: ``1/5m``, ``10/1h``."""
    from technician_ops.runbook.params import parse_duration

    count, sep, period = text.partition("/")
    try:
        if not sep or not count.strip().isdigit() or int(count) < 1:
            raise ValueError("count")
        return int(count), float(parse_duration(period.strip()))
    except ValueError:
        raise UsageError(f"--rate {text!r}: write N/PERIOD, e.g. 1/5m (at most N starts of a runbook per PERIOD)") from None


def read_secret(path: str | None, env: str, what: str) -> bytes | None:
    """A token or HMAC secret from a file (trailing whitespace stripped, as Alertmanager's credentials_file
    is read) or from ``env``; the variable is removed from this process's environment once read."""
    value: str | None = None
    if path:
        import stat

        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"{what} file {path} is not a regular file")
            if st.st_mode & stat.S_IROTH:
                raise ConfigError(f"{what} file {path} is readable by every user", hint=f"chmod o-r {path}")
            with open(path, encoding="utf-8") as fh:
                value = fh.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the {what} file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"the {what} file {path} is not text") from None
    elif os.environ.get(env):
        value = os.environ.pop(env).strip()
    if value is None:
        return None
    if len(value) < MIN_SECRET or not value.isprintable():
        raise ConfigError(f"the {what} must be at least {MIN_SECRET} printable characters",
                          hint="generate one: head -c 32 /dev/urandom | base64")
    return value.encode("utf-8")
