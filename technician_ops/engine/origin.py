"""Who runs this, from where: the operator and origin in every audit record."""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ORIGIN_ENV = "TECHNICIAN_OPS_ORIGIN"  # set to "cron" by `schedule export` entries


def operator() -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid())
    return {"user": user, "host": socket.gethostname(), "pid": os.getpid()}


def _ci(env: Mapping[str, str]) -> dict[str, Any] | None:
    if env.get("GITHUB_ACTIONS") == "true":
        run_id = env.get("GITHUB_RUN_ID")
        url = None
        if run_id and env.get("GITHUB_REPOSITORY"):
            url = f"{env.get('GITHUB_SERVER_URL', 'https://github.com')}/{env['GITHUB_REPOSITORY']}/actions/runs/{run_id}"
        return {"type": "ci", "system": "github-actions", "run_id": run_id, "url": url}
    if env.get("GITLAB_CI"):
        return {"type": "ci", "system": "gitlab-ci", "run_id": env.get("CI_PIPELINE_ID"), "job_id": env.get("CI_JOB_ID"),
                "url": env.get("CI_JOB_URL") or env.get("CI_PIPELINE_URL")}
    if env.get("BUILDKITE") == "true":
        return {"type": "ci", "system": "buildkite", "run_id": env.get("BUILDKITE_BUILD_ID"), "url": env.get("BUILDKITE_BUILD_URL")}
    if env.get("CIRCLECI") == "true":
        return {"type": "ci", "system": "circleci", "run_id": env.get("CIRCLE_WORKFLOW_ID") or env.get("CIRCLE_BUILD_NUM"),
                "url": env.get("CIRCLE_BUILD_URL")}
    if env.get("JENKINS_URL"):
        return {"type": "ci", "system": "jenkins", "run_id": env.get("BUILD_TAG") or env.get("BUILD_ID"), "url": env.get("BUILD_URL")}
    if env.get("CI", "").lower() in ("true", "1"):
        return {"type": "ci", "system": "unknown", "run_id": None, "url": None}
    return None


def origin(env: Mapping[str, str] | None = None, *, interactive: bool | None = None) -> dict[str, Any]:
    env = os.environ if env is None else env
    ci = _ci(env)
    if ci:
        return ci
    if env.get(ORIGIN_ENV) == "cron":
        return {"type": "cron", "system": None, "run_id": None, "url": None}
    tty = sys.stdin.isatty() if interactive is None else interactive
    return {"type": "terminal" if tty else "script", "system": None, "run_id": None, "url": None}


def git_info(path: Path) -> dict[str, Any] | None:
    """Commit and dirty flag of the repository holding ``path``, or None."""
    try:
        cwd = path.parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--", path.name], cwd=cwd, capture_output=True, text=True, timeout=5)
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None
