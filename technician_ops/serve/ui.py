"""The web view inside ``technician-ops serve``: mounted at ``/ui/``, its users and its one action.

- **Who.** With a serve token, a browser signs in with HTTP Basic: any user name, the token as the
  password (compared in constant time); that name is who approves.  Without a token the view is
  read-only: it shows no Approve button, and ``POST .../approve`` is refused.
- **Approve.** A release runs a whole runbook: it runs as ``technician-ops approve RUN_ID`` in a
  process of its own (Ansible's in-process loaders are not thread-safe, and the server must keep
  answering webhooks), with the signed-in name recorded beside the server's own user.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import secrets
import subprocess
import sys
import threading
from typing import Callable

from aiohttp import web

from technician_ops.errors import PastRunError
from technician_ops.project import Project

PREFIX = "/ui"
APPROVE_TIMEOUT = 6 * 3600  # seconds: a released runbook's own timeout is its limit; this only bounds a hang


def installer(project: Project, token: bytes | None) -> Callable[[web.Application], None]:
    """What ``serve.server.build_app(extra=...)`` calls: mounts the web view at ``/ui/``."""

    def install(app: web.Application) -> None:
        from technician_ops.serve.web import make_app

        auth = basic_auth(token) if token else None
        view = make_app(project, approve=release(project) if token else None, csrf_secret=secrets.token_bytes(32),
                        auth=auth)
        app.add_subapp(PREFIX, view)

        async def home(request: web.Request) -> web.StreamResponse:
            raise web.HTTPFound(f"{PREFIX}/")

        app.router.add_get("/", home)

    return install


def basic_auth(token: bytes) -> Callable[[web.Request], str | None]:
    """The signed-in user's name when the request's Basic password is the serve token, else None."""

    def auth(request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not value:
            return None
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if not sep or not hmac.compare_digest(password.encode("utf-8"), token):
            return None
        name = "".join(c for c in user if c.isprintable())[:64]
        return name or "web"

    return auth


def release(project: Project) -> Callable[[str, str], str]:
    """``approve(run_id, user) -> new run id``: ``technician-ops approve`` in a process of its own."""

    def approve(run_id: str, user: str) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TECHNICIAN_OPS_SERVE_")}
        env["TECHNICIAN_OPS_APPROVED_VIA"] = f"web:{user}"
        proc = subprocess.Popen([sys.executable, "-m", "technician_ops.cli", "--project", str(project.root), "approve",
                                 run_id, "--output", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True, env=env)
        assert proc.stdout is not None and proc.stderr is not None
        for line in proc.stdout:  # the page answers once the release has started; the run goes on
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "run_start":
                threading.Thread(target=_finish, args=(proc,), name=f"release-{run_id}", daemon=True).start()
                return str(event.get("run_id"))
        stderr = proc.stderr.read()
        proc.wait()
        message = (stderr.strip().splitlines() or [f"approve exited {proc.returncode}"])[-1]
        raise PastRunError(message.removeprefix("error: "))

    return approve


def _finish(proc: subprocess.Popen[str]) -> None:
    """Read a release to its end (its record is its account) and reap it."""
    assert proc.stdout is not None and proc.stderr is not None
    for _line in proc.stdout:
        pass
    proc.stderr.read()
    proc.wait()
