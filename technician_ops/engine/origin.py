"""Who runs this, from where: the operator and origin in every audit record."""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ORIGIN_ENV = "TECHNICIAN_OPS_ORIGIN"  # set to "cron" by `schedule export` entries, "alertmanager" by `serve`
# With TECHNICIAN_OPS_ORIGIN=alertmanager only: the alert that started the run, as a JSON object (``alert_detail``).
ORIGIN_DETAIL_ENV = "TECHNICIAN_OPS_ORIGIN_DETAIL"
ALERTMANAGER = "alertmanager"
MAX_DETAIL_BYTES = 16 * 1024
MAX_DETAIL_LABELS = 64
MAX_LABEL_VALUE = 1024
_DETAIL_TEXT = {"receiver": 256, "starts_at": 64, "alert_id": 64, "runbook": 100}
_FINGERPRINT = re.compile(r"[0-9a-f]{1,64}")
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def operator() -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid())
    return {"user": user, "host": socket.gethostname(), "pid": os.getpid()}


def controller(name: str | None) -> dict[str, Any]:
    """The controller that ran a run, for a team whose controllers share one audit store: its configured
    ``controller_name`` (``TECHNICIAN_OPS_CONTROLLER``), else this host's name."""
    host = socket.gethostname()
    return {"name": name or host, "host": host}


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


def alert_detail(text: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """The alert a run was started for, from ``TECHNICIAN_OPS_ORIGIN_DETAIL``: (detail, None), or
    (None, why it was not taken).

    The value is data from an alert, so it is taken only in its one shape: a JSON object of at most
    16 KiB with ``receiver``, ``fingerprint`` (hex), ``starts_at``, ``alert_id``, ``runbook`` (strings)
    and ``labels`` (at most 64 label names to strings).  Anything else is left out of the record, and
    the record says so.
    """
    if not text:
        return None, "no alert detail was given"
    if len(text.encode("utf-8", errors="replace")) > MAX_DETAIL_BYTES:
        return None, f"the alert detail is larger than {MAX_DETAIL_BYTES} bytes"
    try:
        data = json.loads(text)
    except ValueError:
        return None, "the alert detail is not JSON"
    if not isinstance(data, dict):
        return None, "the alert detail is not a JSON object"
    unknown = sorted(set(data) - {*_DETAIL_TEXT, "fingerprint", "labels"})
    if unknown:
        return None, f"the alert detail has unknown keys ({', '.join(unknown)[:200]})"
    out: dict[str, Any] = {}
    for key, limit in _DETAIL_TEXT.items():
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > limit:
            return None, f"the alert detail's {key} is not a string of at most {limit} characters"
        out[key] = value
    fingerprint = data.get("fingerprint")
    if fingerprint is not None:
        if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
            return None, "the alert detail's fingerprint is not hexadecimal"
        out["fingerprint"] = fingerprint
    labels = data.get("labels", {})
    if not isinstance(labels, dict) or len(labels) > MAX_DETAIL_LABELS:
        return None, f"the alert detail's labels are not a mapping of at most {MAX_DETAIL_LABELS} labels"
    for name, value in labels.items():
        if not _LABEL_NAME.fullmatch(name) or not isinstance(value, str) or len(value) > MAX_LABEL_VALUE:
            return None, "the alert detail's labels are not label names to strings"
    out["labels"] = dict(sorted(labels.items()))
    return out, None


def origin(env: Mapping[str, str] | None = None, *, interactive: bool | None = None) -> dict[str, Any]:
    env = os.environ if env is None else env
    if env.get(ORIGIN_ENV) == ALERTMANAGER:  # explicit, and more precise than a CI system around the server
        detail, problem = alert_detail(env.get(ORIGIN_DETAIL_ENV))
        found: dict[str, Any] = {"type": ALERTMANAGER, "system": ALERTMANAGER, "run_id": None, "url": None,
                                 "alert": detail}
        if problem:
            found["alert_problem"] = problem
        return found
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
