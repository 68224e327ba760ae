"""The failover refusal and fence rules of technician_ops.contrib.pg_failover, table by table (no server)."""

from __future__ import annotations

import pytest

from technician_ops.contrib.pg_failover import NodeState, decide_fence, decide_preflight, parse_lsn

MB = 1 << 20


def primary(writable: bool = True, lsn: str = "0/5000000") -> NodeState:
    if not writable:
        return NodeState("db1", "10.0.0.1", reachable=False, error="connection refused")
    return NodeState("db1", "10.0.0.1", reachable=True, in_recovery=False, writable=True, timeline=1, current_lsn=lsn)


def standby(name: str = "db2", replay: str = "0/5000000", receive: str | None = None, paused: bool = False,
            in_recovery: bool = True) -> NodeState:
    return NodeState(name, f"10.0.0.{len(name)}{name[-1]}", reachable=True, in_recovery=in_recovery,
                     writable=not in_recovery, timeline=1, replay_lsn=replay, receive_lsn=receive or replay,
                     replay_paused=paused)


def decide(*nodes: NodeState, planned: bool = False, max_lag: int = 16 * MB):  # type: ignore[no-untyped-def]
    return decide_preflight({n.name: n for n in nodes}, "db1", "db2", max_lag_bytes=max_lag, planned=planned)


def test_parse_lsn() -> None:
    assert parse_lsn("0/3000148") == 0x3000148
    assert parse_lsn("1/0") == 1 << 32
    assert parse_lsn(None) is None


@pytest.mark.parametrize(
    "nodes, planned, reason",
    [
        ((primary(False), standby(replay="0/1000000", receive="0/4000000")), False, "lags 50331648 bytes"),
        ((primary(False), standby(paused=True)), False, "replay is paused"),
        ((primary(True), standby()), False, "still accepts writes"),
        ((primary(False), standby(), standby("db3", replay="0/6000000")), False, "db3 is further ahead"),
        ((primary(False), standby()), True, "needs a running primary"),
        ((primary(True), standby(in_recovery=False)), False, "already split"),
    ],
)
def test_refusals(nodes: tuple[NodeState, ...], planned: bool, reason: str) -> None:
    verdict = decide(*nodes, planned=planned)
    assert verdict.refused
    assert any(reason in r for r in verdict.refusals), verdict.refusals


def test_lag_is_measured_against_the_live_primary() -> None:
    verdict = decide(primary(True, lsn="0/9000000"), standby(replay="0/5000000"), planned=True, max_lag=MB)
    assert verdict.nodes["db2"].lag_bytes == 0x4000000
    assert verdict.refusals == ["db2 lags 67108864 bytes behind, more than max_lag_bytes=1048576"]


def test_caught_up_standby_of_a_lost_primary_passes() -> None:
    verdict = decide(primary(False), standby(), standby("db3", replay="0/4000000"))
    assert not verdict.refused and not verdict.already_promoted
    assert verdict.nodes["db2"].lag_bytes == 0


def test_a_standby_promoted_by_an_earlier_run_converges() -> None:
    verdict = decide(primary(False), standby(in_recovery=False))
    assert not verdict.refused and verdict.already_promoted


def test_fence_needs_both_the_host_and_the_network_to_agree() -> None:
    gone = NodeState("db1", "10.0.0.1", error="timeout")
    assert decide_fence("db1", {"rc": 3}, gone, allow_data_loss=False, approved_by="").verified
    assert not decide_fence("db1", {"rc": 0}, gone, allow_data_loss=False, approved_by="").verified
    assert not decide_fence("db1", {"unreachable": True}, gone, allow_data_loss=False, approved_by="").verified
    assert not decide_fence("db1", {"rc": 3}, primary(True), allow_data_loss=False, approved_by="").verified


def test_override_is_recorded_with_who_approved_it() -> None:
    fence = decide_fence("db1", {"rc": 0}, primary(True), allow_data_loss=True, approved_by="alice")
    assert not fence.verified and fence.override and fence.approved_by == "alice"
    assert decide_fence("db1", {"rc": 3}, primary(False), allow_data_loss=True, approved_by="alice").override is False
