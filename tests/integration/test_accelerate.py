"""``--accelerate``: one bundled runbook under mitogen's strategy, same result as without it."""

from __future__ import annotations

import pytest

from technician_ops.engine import accelerate
from technician_ops.errors import ExitCode
from technician_ops.events import Outcome
from tests.integration.test_runs import run_demo

pytestmark = pytest.mark.integration


def test_accelerated_run_matches_the_linear_one(demo) -> None:  # type: ignore[no-untyped-def]
    found = accelerate.check()
    if not found.usable:
        pytest.skip(f"mitogen cannot drive this Ansible: {found.reason}")
    params = {"version": "3.2", "demo_root": str(demo.hosts_dir)}
    result, events = run_demo(demo, "deploy-config", params, accelerate=True, run_id="t-accel")
    assert result.outcome is Outcome.SUCCEEDED and result.exit_code == ExitCode.OK
    assert result.artifact_dir is not None
    assert "strategy = mitogen_linear" in (demo.project().state_dir / "runs" / result.run_id / "ansible.cfg").read_text()
    assert not [e for e in events if e["event"] == "notice" and "accelerate" in e.get("message", "")]
    for host in ("web1", "web2"):
        assert (demo.host_dir(host) / "app.conf").read_text().startswith("version=3.2\n")
    fast = {(e["step"], e["host"]): e["status"] for e in events if e["event"] == "host_result"}

    for host in ("web1", "web2"):  # the same run again, linear: the same per-host outcome (now all "ok")
        (demo.host_dir(host) / "app.conf").unlink()
        (demo.host_dir(host) / "release.txt").unlink()
    result, events = run_demo(demo, "deploy-config", params, accelerate=False, run_id="t-linear")
    assert result.outcome is Outcome.SUCCEEDED
    assert result.artifact_dir is not None
    assert "strategy = mitogen_linear" not in (demo.project().state_dir / "runs" / result.run_id / "ansible.cfg").read_text()
    assert {(e["step"], e["host"]): e["status"] for e in events if e["event"] == "host_result"} == fast


def test_unusable_mitogen_falls_back_to_linear_with_one_notice(demo, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(accelerate, "check", lambda: accelerate.Acceleration(False, reason="mitogen is not installed"))
    result, events = run_demo(demo, "disk-usage-check", {}, accelerate=None, run_id="t-fallback",
                              environ={accelerate.ENV: "1"})
    assert result.outcome is Outcome.SUCCEEDED
    notices = [e["message"] for e in events if e["event"] == "notice" and "accelerate" in e["message"]]
    assert notices == ["--accelerate: mitogen is not installed; running with the linear strategy"]
    assert result.artifact_dir is not None
    assert "strategy = mitogen_linear" not in (demo.project().state_dir / "runs" / result.run_id / "ansible.cfg").read_text()


def test_accelerated_run_keeps_ansibles_strategy_deprecation_out(demo, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """ansible-core 2.19 deprecates every strategy outside ansible.builtin, mitogen's included, and has no
    other way for it (docs/performance.md).  A team file or the caller's environment turning deprecation
    warnings on must not bring that warning into every accelerated run: the run says why it overrides them."""
    found = accelerate.check()
    if not found.usable:
        pytest.skip(f"mitogen cannot drive this Ansible: {found.reason}")
    project = demo.project()
    (project.root / "ansible.cfg").write_text("[defaults]\ndeprecation_warnings = True\n")
    monkeypatch.setenv("ANSIBLE_DEPRECATION_WARNINGS", "1")
    try:
        result, events = run_demo(demo, "disk-usage-check", {}, accelerate=True, run_id="t-accel-deprecation")
    finally:
        (project.root / "ansible.cfg").unlink()
    assert result.outcome is Outcome.SUCCEEDED
    run_dir = project.state_dir / "runs" / result.run_id
    assert "strategy = mitogen_linear" in (run_dir / "ansible.cfg").read_text()
    stdout = (run_dir / "artifacts" / "run" / "stdout").read_text()
    assert "mitogen_linear" not in stdout and "strategy plugins not included" not in stdout
    notices = [e["message"] for e in events if e["event"] == "notice"]
    assert any("deprecation_warnings = True is replaced by False: under --accelerate" in n for n in notices), notices

    # Without --accelerate the team's setting stands.
    (project.root / "ansible.cfg").write_text("[defaults]\ndeprecation_warnings = True\n")
    try:
        result, events = run_demo(demo, "disk-usage-check", {}, accelerate=False, run_id="t-linear-deprecation")
    finally:
        (project.root / "ansible.cfg").unlink()
    assert "deprecation_warnings = True" in (project.state_dir / "runs" / result.run_id / "ansible.cfg").read_text()
