"""PostgreSQL failover facts and decisions, for the ``db-failover`` runbook.

The runbook's Ansible steps do what must happen *on* a database host
(stop, promote, rewind, start); this module is what the controller decides
from the outside, over libpq, because an on-call engineer's question is
"what does a client see?": is a node writable, how far behind is the
standby, which timeline is it on.  It is pure decision logic
(``decide_preflight``, ``decide_fence``) plus thin probes (``probe``), so
the refusal rules are unit-tested without a server and proven against real
servers by the integration tests.

Nothing here changes a database except ``record_write``, the verification
write on the new primary.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from technician_ops.errors import TechnicianOpsError

LOG_TABLE = "technician_ops_failover_log"


class FailoverError(TechnicianOpsError):
    """A failover fact could not be read or did not hold; the message says which node and why."""


def parse_lsn(text: str | None) -> int | None:
    """``'0/3000148'`` -> byte position; None stays None."""
    if not text:
        return None
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) + int(lo, 16)


@dataclass
class NodeState:
    """What one node looks like from a client, at one moment."""

    name: str
    address: str
    reachable: bool = False
    error: str | None = None
    in_recovery: bool | None = None
    writable: bool = False
    timeline: int | None = None
    current_lsn: str | None = None  # a primary's insert position
    receive_lsn: str | None = None  # a standby's last received WAL
    replay_lsn: str | None = None  # a standby's last replayed WAL
    replay_paused: bool = False
    lag_bytes: int | None = None  # filled in by decide_preflight, against the primary or received WAL
    log_rows: int | None = None  # rows of LOG_TABLE this node holds

    @property
    def position(self) -> int:
        """How far this node's data goes: what a promotion would keep."""
        return max(parse_lsn(self.replay_lsn) or 0, parse_lsn(self.current_lsn) or 0)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_STATE_SQL = """
select pg_is_in_recovery(),
       current_setting('transaction_read_only') = 'on' or current_setting('default_transaction_read_only') = 'on',
       case when pg_is_in_recovery() then null else pg_current_wal_lsn()::text end,
       pg_last_wal_receive_lsn()::text,
       pg_last_wal_replay_lsn()::text,
       case when pg_is_in_recovery() then pg_get_wal_replay_pause_state() else 'not paused' end,
       case when pg_is_in_recovery()
            then coalesce((select received_tli from pg_stat_wal_receiver where received_tli > 0),
                          (select timeline_id from pg_control_checkpoint()))
            else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int end,
       to_regclass(%s) is not null
"""


def conninfo(address: str, *, port: int, user: str, dbname: str, timeout: int = 3) -> str:
    return f"host={address} port={port} user={user} dbname={dbname} connect_timeout={timeout}"


def probe(name: str, address: str, *, port: int = 5432, user: str = "postgres", dbname: str = "postgres",
          timeout: int = 3) -> NodeState:
    """Read one node's state over libpq; an unreachable node is a fact, not an error."""
    import psycopg

    state = NodeState(name=name, address=address)
    try:
        with psycopg.connect(conninfo(address, port=port, user=user, dbname=dbname, timeout=timeout),
                             autocommit=True) as conn:
            row = conn.execute(_STATE_SQL, (LOG_TABLE,)).fetchone()
            assert row is not None
            (state.in_recovery, read_only, state.current_lsn, state.receive_lsn, state.replay_lsn, pause,
             state.timeline, has_log) = row
            state.reachable = True
            state.writable = not state.in_recovery and not read_only
            state.replay_paused = pause != "not paused"
            if has_log:
                counted = conn.execute(f"select count(*) from {LOG_TABLE}").fetchone()
                state.log_rows = int(counted[0]) if counted else 0
            else:
                state.log_rows = 0
    except psycopg.Error as exc:
        state.error = " ".join(str(exc).split())[:300]
    return state


@dataclass
class Preflight:
    """The verdict of the read-only preflight, as the audit record keeps it."""

    primary: str
    standby: str
    nodes: dict[str, NodeState]
    refusals: list[str] = field(default_factory=list)
    already_promoted: bool = False

    @property
    def refused(self) -> bool:
        return bool(self.refusals)

    def as_dict(self) -> dict[str, Any]:
        return {"primary": self.primary, "standby": self.standby, "refusals": list(self.refusals),
                "already_promoted": self.already_promoted,
                "nodes": {n: s.as_dict() for n, s in self.nodes.items()}}


def decide_preflight(nodes: dict[str, NodeState], primary: str, standby: str, *, max_lag_bytes: int,
                     planned: bool) -> Preflight:
    """Every reason to refuse, not only the first: an operator fixes them all at once."""
    if primary == standby:
        return Preflight(primary, standby, nodes, [f"primary and standby are the same host ({primary})"])
    p, s = nodes[primary], nodes[standby]
    verdict = Preflight(primary, standby, nodes)
    refuse = verdict.refusals.append
    if not s.reachable:
        refuse(f"standby {standby} does not answer ({s.error}): nothing to promote")
        return verdict
    # The lag of every standby: against the live primary when it answers,
    # else the WAL it received but has not replayed yet.
    primary_lsn = parse_lsn(p.current_lsn) if p.writable else None
    for node in nodes.values():
        if node.in_recovery:
            received = parse_lsn(node.receive_lsn)
            replayed = parse_lsn(node.replay_lsn) or 0
            ahead = primary_lsn if primary_lsn is not None else max(received or 0, replayed)
            node.lag_bytes = max(0, ahead - replayed)
    if not s.in_recovery:
        if p.writable:
            refuse(f"{standby} and {primary} both accept writes: the cluster is already split; "
                   "a human must pick the survivor")
        else:
            # A previous run promoted it; the rest of the runbook converges.
            verdict.already_promoted = True
        return verdict
    if s.replay_paused:
        refuse(f"WAL replay is paused on {standby}: resume it (select pg_wal_replay_resume()) or find out why")
    if s.lag_bytes is not None and s.lag_bytes > max_lag_bytes:
        refuse(f"{standby} lags {s.lag_bytes} bytes behind, more than max_lag_bytes={max_lag_bytes}")
    for other in nodes.values():
        if other.name in (primary, standby) or not other.reachable or not other.in_recovery:
            continue
        if other.position > s.position:
            refuse(f"standby {other.name} is further ahead ({other.replay_lsn}) than {standby} "
                   f"({s.replay_lsn}): promote {other.name} instead, or it loses data")
    if p.writable and not planned:
        refuse(f"old primary {primary} still accepts writes: this is not a failover; "
               "run with -p planned=true for a clean switchover")
    if planned and not p.writable:
        refuse(f"a planned switchover needs a running primary, and {primary} does not accept writes"
               f" ({p.error or 'read-only'}): run without planned=true for a failover")
    return verdict


@dataclass
class Fence:
    """Whether the old primary provably cannot take writes any more."""

    host: str
    verified: bool
    method: str
    evidence: list[str]
    override: bool = False
    approved_by: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_fence(host: str, host_result: dict[str, Any], seen: NodeState, *, allow_data_loss: bool,
                 approved_by: str) -> Fence:
    """A fence is verified only by two independent observations: on the host,
    ``pg_ctl status`` says no server runs; from outside, the node accepts no
    write.  Anything less — an unreachable host above all — is unverified."""
    evidence: list[str] = []
    if host_result.get("unreachable") or not host_result:
        evidence.append(f"{host} could not be reached over SSH: the server there may still run")
        on_host = False
    else:
        rc = host_result.get("rc")
        on_host = rc == 3  # pg_ctl status: 3 = no server running
        evidence.append(f"pg_ctl status on {host}: rc={rc} ({'stopped' if on_host else 'still running'})")
    if seen.writable:
        evidence.append(f"{host} still accepts writes over libpq")
    elif seen.reachable:
        evidence.append(f"{host} answers but is read-only")
    else:
        evidence.append(f"{host} does not answer over libpq ({seen.error})")
    verified = on_host and not seen.writable
    fence = Fence(host, verified, "pg_ctl stop", evidence)
    if not verified and allow_data_loss:
        fence.override = True
        fence.approved_by = approved_by or None
    return fence


def wait_promoted(name: str, address: str, expected_timeline: int, *, port: int, user: str, dbname: str,
                  timeout: float = 60.0) -> NodeState:
    """Until the node is out of recovery on the expected timeline; the last state either way."""
    deadline = time.monotonic() + timeout
    while True:
        state = probe(name, address, port=port, user=user, dbname=dbname)
        if state.reachable and state.in_recovery is False and state.timeline == expected_timeline:
            return state
        if time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def wait_replayed(name: str, address: str, lsn: str, *, port: int, user: str, dbname: str,
                  timeout: float = 30.0) -> NodeState:
    """Until the standby replayed up to ``lsn`` (the old primary's shutdown checkpoint)."""
    target = parse_lsn(lsn) or 0
    deadline = time.monotonic() + timeout
    while True:
        state = probe(name, address, port=port, user=user, dbname=dbname)
        if state.reachable and (parse_lsn(state.replay_lsn) or 0) >= target:
            return state
        if time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def record_write(address: str, *, run_id: str, node: str, port: int, user: str, dbname: str) -> int:
    """Write one row on the new primary (the proof it takes writes); the table's row count after."""
    import psycopg

    with psycopg.connect(conninfo(address, port=port, user=user, dbname=dbname), autocommit=True) as conn:
        conn.execute(f"create table if not exists {LOG_TABLE} (id bigserial primary key, run_id text not null,"
                     " node text not null, at timestamptz not null default now())")
        conn.execute(f"insert into {LOG_TABLE} (run_id, node) values (%s, %s)", (run_id, node))
        row = conn.execute(f"select count(*) from {LOG_TABLE}").fetchone()
        return int(row[0]) if row else 0


def read_write_target(addresses: list[str], *, port: int, user: str, dbname: str) -> str | None:
    """The address a libpq client with ``target_session_attrs=read-write`` reaches, or None."""
    import psycopg

    info = (f"host={','.join(addresses)} port={','.join(str(port) for _ in addresses)} user={user}"
            f" dbname={dbname} connect_timeout=3 target_session_attrs=read-write")
    try:
        with psycopg.connect(info, autocommit=True) as conn:
            row = conn.execute("select host(inet_server_addr())").fetchone()
            return str(row[0]) if row else None
    except psycopg.Error:
        return None
