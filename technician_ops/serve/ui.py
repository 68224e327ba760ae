"""The web view inside ``technician-ops serve``: mounted at ``/ui/``, its users and its one action.

- **Who.** People sign in with HTTP Basic against a users file of their own
  (``--web-users-file``: ``NAME:pbkdf2_sha256$ITERATIONS$SALT$HASH`` lines, made by
  ``technician-ops serve --hash-password``), never with the webhook's token: that one is a
  machine's credential, and an approval names a person.  With a users file, every page asks for
  a sign-in (401 with ``WWW-Authenticate``), and Approve is offered.  Without one, the view is
  read-only and only mounted on a loopback bind: the records are not for the network.
- **Approve.** A release runs a whole runbook: ``technician-ops approve RUN_ID`` in a process
  group of its own (Ansible's in-process loaders are not thread-safe, and the server must keep
  answering webhooks), its output in files under the state dir (it outlives no pipe), the
  server's audit store and notify URL in its environment, and the server's drain waiting for it,
  then stopping it (so it rolls back) like its own runs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from technician_ops.errors import ConfigError, PastRunError
from technician_ops.project import Project

if TYPE_CHECKING:
    from aiohttp import web

    from technician_ops.serve.server import Server

log = logging.getLogger(__name__)

PREFIX = "/ui"
USERS_ENV = "TECHNICIAN_OPS_SERVE_WEB_USERS"  # a users file's path, instead of --web-users-file
ITERATIONS = 200_000
START_TIMEOUT = 120.0  # seconds for a release to start (its run_start), or the page says why not
_LINE = re.compile(r"^([A-Za-z0-9._@-]{1,64}):pbkdf2_sha256\$(\d{4,7})\$([0-9a-f]{16,128})\$([0-9a-f]{64})$")


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """A users-file hash of ``password`` (PBKDF2-HMAC-SHA256, stdlib)."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"pbkdf2_sha256${iterations}${salt.hex()}${digest.hex()}"


def read_users(path: Path) -> dict[str, tuple[int, bytes, bytes]]:
    """``NAME:HASH`` lines; a malformed line is a ConfigError naming file and line; the file is private."""
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the web users file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if st.st_mode & 0o077:
        raise ConfigError(f"{path} can be read by other users (mode {st.st_mode & 0o777:o})", hint=f"chmod 600 {path}")
    users: dict[str, tuple[int, bytes, bytes]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line.strip())
        if match is None:
            raise ConfigError(f"{path}:{number}: not NAME:pbkdf2_sha256$ITERATIONS$SALT$HASH",
                              hint="make a line with: technician-ops serve --hash-password")
        users[match.group(1)] = (int(match.group(2)), bytes.fromhex(match.group(3)), bytes.fromhex(match.group(4)))
    if not users:
        raise ConfigError(f"{path}: no user")
    return users


def installer(project: Project, users: dict[str, tuple[int, bytes, bytes]] | None,
              loopback: bool) -> Callable[[web.Application], None]:
    """What ``serve.server.build_app(extra=...)`` calls: mounts the web view at ``/ui/``."""

    def install(app: web.Application) -> None:
        from aiohttp import web

        from technician_ops.serve.server import server_key
        from technician_ops.serve.web import make_app

        if users is None and not loopback:
            log.info("web view not served: it needs --web-users-file on a bind other than loopback")
            return
        server = app[server_key()]
        auth = basic_auth(users) if users else None
        view = make_app(project, approve=release(project, server) if users else None,
                        csrf_secret=secrets.token_bytes(32), auth=auth)
        if auth is not None:
            view.middlewares.append(_sign_in(auth))
        app.add_subapp(PREFIX, view)

        async def home(request: web.Request) -> web.StreamResponse:
            raise web.HTTPFound(f"{PREFIX}/")

        app.router.add_get("/", home)

    return install


def _sign_in(auth: Callable[[web.Request], str | None]) -> Any:
    from aiohttp import web

    @web.middleware
    async def sign_in(request: web.Request, handler: Any) -> web.StreamResponse:
        if auth(request) is None:
            return web.Response(status=401, text="sign in to see the runs\n",
                                headers={"WWW-Authenticate": 'Basic realm="technician-ops", charset="UTF-8"',
                                         "Cache-Control": "no-store"})
        return await handler(request)

    return sign_in


def basic_auth(users: dict[str, tuple[int, bytes, bytes]]) -> Callable[[web.Request], str | None]:
    """The signed-in user's name when the request's Basic credentials match the users file, else None."""

    def auth(request: web.Request) -> str | None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic" or not value:
            return None
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        known = users.get(user)
        iterations, salt, expected = known if known else (ITERATIONS, b"\0" * 16, b"\0" * 32)
        digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)  # the same work either way
        return user if sep and known is not None and hmac.compare_digest(digest, expected) else None

    return auth


def release(project: Project, server: Server) -> Callable[[str, str], str]:
    """``approve(run_id, user) -> new run id``: ``technician-ops approve`` in a process group of its own."""

    def approve(run_id: str, user: str) -> str:
        folder = project.state_dir / "serve" / "releases"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        out_path, err_path = folder / f"{run_id}.{os.getpid()}.{time.monotonic_ns()}.jsonl", None
        err_path = out_path.with_suffix(".stderr")
        env = server.release_environ()
        env["TECHNICIAN_OPS_APPROVED_VIA"] = f"web:{user}"
        with open(out_path, "w", encoding="utf-8") as out, open(err_path, "w", encoding="utf-8") as err:
            os.chmod(out_path, 0o600)
            os.chmod(err_path, 0o600)
            proc = subprocess.Popen([sys.executable, "-m", "technician_ops.cli", "--project", str(project.root),
                                     "approve", run_id, "--output", "json"], stdout=out, stderr=err,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        from technician_ops.audit.store import process_identity

        server.releases[proc.pid] = process_identity(proc.pid) or ""
        threading.Thread(target=_reap, args=(server, proc), name=f"release-{run_id}", daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:  # the page answers once the release has started; the run goes on
            for line in out_path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == "run_start":
                    return str(event.get("run_id"))
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        lines = err_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        raise PastRunError((lines[-1] if lines else f"approve exited {proc.returncode}").removeprefix("error: "))

    return approve


def _reap(server: Server, proc: subprocess.Popen[bytes]) -> None:
    proc.wait()
    server.releases.pop(proc.pid, None)
