"""Action plugin: the controller's view of a PostgreSQL failover (see technician_ops/pgfailover.py).

Runs on the controller without a connection: it probes the database nodes
over libpq from where the clients are, decides, and adds what it saw to the
run's record as ``artifact`` events (``pg_state`` before and after,
``pg_fence``, ``pg_failover``).  Ops:

* ``preflight``: read-only; fails ("refused: ...") on any reason to refuse.
* ``verify_fence``: the old primary is stopped on its host and takes no
  write from outside; for a planned switchover, the standby also replayed
  the old primary's shutdown checkpoint.  Unverified fails, unless
  ``allow_data_loss`` with a non-empty ``approved_by`` (recorded).
* ``verify_promotion``: the standby left recovery and its timeline is the
  one before promotion plus one; never the promote call's word alone.
* ``verify``: one write on the new primary, every earlier log row present,
  and a read-write libpq client over all nodes lands on the new primary.
"""

from __future__ import annotations

import json
from typing import Any

from technician_ops.steps.action import ControllerAction


def _address(task_vars: dict[str, Any], host: str) -> str:
    hostvars = task_vars.get("hostvars") or {}
    try:
        value = hostvars[host].get("ansible_host")
    except KeyError:
        value = None
    return str(value or host)


class ActionModule(ControllerAction):

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        from technician_ops.steps.action import call
        from technician_ops.errors import TechnicianOpsError

        result: dict[str, Any] = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = dict(self._task.args)
        op = str(args.get("op", ""))
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            result.update(failed=True, msg=f"unknown op {op!r}: preflight, verify_fence, verify_promotion or verify")
            return result
        try:
            outcome, artifacts = handler(args, task_vars)
        except TechnicianOpsError as exc:
            result.update(failed=True, msg=exc.message)
            return result
        for artifact in artifacts:
            reply = call("emit", kind="artifact", data=artifact)
            if not reply.get("ok"):
                result.update(failed=True, msg=f"could not record {artifact['type']}: {reply.get('error')}")
                return result
        result.update(outcome)
        result.setdefault("changed", False)
        return result

    # ------------------------------------------------------------- helpers

    @staticmethod
    def _db(args: dict[str, Any]) -> dict[str, Any]:
        return {"port": int(args.get("port", 5432)), "user": str(args.get("user", "postgres")),
                "dbname": str(args.get("dbname", "postgres"))}

    # ------------------------------------------------------------------ ops

    def _op_preflight(self, args: dict[str, Any], task_vars: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        from technician_ops.contrib import pg_failover as pgfailover

        primary, standby = str(args["primary"]), str(args["standby"])
        names = [str(n) for n in args.get("nodes") or [primary, standby]]
        for required in (primary, standby):
            if required not in names:
                names.append(required)
        db = self._db(args)
        nodes = {n: pgfailover.probe(n, _address(task_vars, n), **db) for n in names}
        verdict = pgfailover.decide_preflight(nodes, primary, standby, max_lag_bytes=int(args["max_lag_bytes"]),
                                              planned=bool(args.get("planned")))
        data = verdict.as_dict()
        s = nodes[standby]
        summary = (f"standby {standby}: lag {s.lag_bytes} bytes, timeline {s.timeline}, replay {s.replay_lsn}"
                   f"{' (paused)' if s.replay_paused else ''}; primary {primary}: "
                   f"{'writable' if nodes[primary].writable else 'not writable'}")
        artifact = {"type": "pg_state", "phase": "before", "summary": summary, **data}
        facts = {"pg_failover_preflight": {**data, "standby_address": s.address,
                                           "primary_address": nodes[primary].address}}
        if verdict.refused:
            msg = "refused before any change:\n- " + "\n- ".join(verdict.refusals)
            return {"failed": True, "msg": msg, "ansible_facts": facts, "refusals": verdict.refusals}, [artifact]
        msg = ("standby already promoted by an earlier run: converging" if verdict.already_promoted
               else f"safe to fail over to {standby}: {summary}")
        return {"msg": msg, "ansible_facts": facts}, [artifact]

    def _op_verify_fence(self, args: dict[str, Any], task_vars: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        from technician_ops.contrib import pg_failover as pgfailover

        primary, standby = str(args["primary"]), str(args["standby"])
        db = self._db(args)
        seen = pgfailover.probe(primary, _address(task_vars, primary), **db)
        status = args.get("status")
        host_result: dict[str, Any] = status if isinstance(status, dict) else {}
        allow = bool(args.get("allow_data_loss"))
        approved_by = str(args.get("approved_by") or "").strip()
        fence = pgfailover.decide_fence(primary, host_result, seen, allow_data_loss=allow, approved_by=approved_by)
        artifact: dict[str, Any] = {"type": "pg_fence", "summary": f"{primary}: fence "
                                    f"{'verified' if fence.verified else 'NOT verified'}"
                                    f"{' (override by ' + approved_by + ')' if fence.override else ''}",
                                    **fence.as_dict()}
        if not fence.verified:
            if not allow:
                return {"failed": True, "msg": "refused: no promotion without a verified fence: "
                        + "; ".join(fence.evidence)
                        + ". If the old primary is certainly dead, re-run with -p allow_data_loss=true"
                          " -p approved_by=NAME"}, [artifact]
            if not approved_by:
                return {"failed": True, "msg": "allow_data_loss=true needs approved_by=NAME: "
                        "who accepted losing the writes the old primary may still take"}, [artifact]
        if args.get("planned") and fence.verified:
            checkpoint = str(args.get("checkpoint_lsn") or "")
            if not checkpoint:
                return {"failed": True, "msg": f"planned switchover: no shutdown checkpoint read from {primary}"}, [artifact]
            state = pgfailover.wait_replayed(standby, _address(task_vars, standby), checkpoint, **db)
            artifact["shutdown_checkpoint_lsn"] = checkpoint
            artifact["standby_replay_lsn"] = state.replay_lsn
            if (pgfailover.parse_lsn(state.replay_lsn) or 0) < (pgfailover.parse_lsn(checkpoint) or 0):
                return {"failed": True, "msg": f"{standby} replayed only to {state.replay_lsn}, not the old "
                        f"primary's shutdown checkpoint {checkpoint}: promoting now would lose writes"}, [artifact]
        return {"msg": artifact["summary"] + ": " + "; ".join(fence.evidence), "fence": fence.as_dict()}, [artifact]

    def _op_verify_promotion(self, args: dict[str, Any], task_vars: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        from technician_ops.contrib import pg_failover as pgfailover

        standby = str(args["standby"])
        marker = args.get("marker")
        if isinstance(marker, str):
            marker = json.loads(marker)
        if not isinstance(marker, dict) or "timeline_before" not in marker:
            raise pgfailover.FailoverError(f"no promotion marker on {standby}: it was not promoted by this runbook")
        before = int(marker["timeline_before"])
        state = pgfailover.wait_promoted(standby, _address(task_vars, standby), before + 1, **self._db(args))
        artifact = {"type": "pg_state", "phase": "after", "node": standby, "timeline_before": before,
                    "timeline_after": state.timeline, "promoted_by_run": marker.get("run_id"),
                    "summary": f"{standby}: in recovery {state.in_recovery}, timeline {before} -> {state.timeline}",
                    "state": state.as_dict()}
        if not state.reachable:
            return {"failed": True, "msg": f"{standby} does not answer after promotion: {state.error}"}, [artifact]
        if state.in_recovery:
            return {"failed": True, "msg": f"{standby} is still in recovery: the promotion did not happen"}, [artifact]
        if state.timeline != before + 1:
            return {"failed": True, "msg": f"{standby} is on timeline {state.timeline}, expected {before + 1}: "
                    "it was promoted more than once, or from another timeline"}, [artifact]
        return {"msg": artifact["summary"], "timeline_after": state.timeline}, [artifact]

    def _op_verify(self, args: dict[str, Any], task_vars: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        from technician_ops.contrib import pg_failover as pgfailover

        primary, standby = str(args["primary"]), str(args["standby"])
        db = self._db(args)
        names = [str(n) for n in args.get("nodes") or [primary, standby]]
        new_addr = _address(task_vars, standby)
        expected_rows = int(args.get("rows_before") or 0)
        if task_vars.get("technician_ops_check"):
            return {"msg": "check mode: no verification write"}, []
        rows = pgfailover.record_write(new_addr, run_id=str(args.get("run_id", "")), node=standby, **db)
        reached = pgfailover.read_write_target([_address(task_vars, n) for n in names], **db)
        artifact = {"type": "pg_failover", "old_primary": primary, "new_primary": standby, "fenced": primary,
                    "log_rows": rows, "log_rows_before": expected_rows, "read_write_client_reached": reached,
                    "summary": f"{standby} is the primary: write ok, {rows} log rows, read-write clients reach {reached}"}
        if rows < expected_rows + 1:
            return {"failed": True, "msg": f"{standby} holds {rows} log rows, fewer than the {expected_rows} "
                    "seen before the failover plus this run's: writes were lost"}, [artifact]
        if reached != new_addr:
            return {"failed": True, "msg": f"a read-write libpq client over {', '.join(names)} reached "
                    f"{reached or 'no server'}, not {standby} ({new_addr})"}, [artifact]
        return {"msg": artifact["summary"]}, [artifact]
