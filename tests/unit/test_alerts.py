"""serve's parts without a server: the webhook payload, the decisions, the journal, the alert in the origin,
and the command-line values (bind, rate, secrets)."""

from __future__ import annotations

import copy
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from technician_ops.engine.origin import alert_detail, origin
from technician_ops.errors import ConfigError, StorageError, UsageError
from technician_ops.plan.loader import load_runbook
from technician_ops.serve.alerts import PayloadError, parse
from technician_ops.serve.dispatch import Dispatcher, RateLimit
from technician_ops.serve.journal import Journal
from technician_ops.serve.config import is_loopback, parse_bind, parse_rate, read_secret

ALERT = {"status": "firing", "labels": {"alertname": "DiskFull", "instance": "web1:9100", "mountpoint": "/var"},
         "annotations": {"summary": "full"}, "startsAt": "2024-05-01T10:00:00.123456789+02:00",
         "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prom/graph", "fingerprint": "1a30ba71cca2921f"}
PAYLOAD = {"version": "4", "groupKey": "{}:{alertname=\"DiskFull\"}", "truncatedAlerts": 0, "status": "firing",
           "receiver": "technician-ops", "groupLabels": {"alertname": "DiskFull"}, "commonLabels": {},
           "commonAnnotations": {}, "externalURL": "http://am:9093", "alerts": [ALERT]}


def body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def test_a_version_4_payload_is_read() -> None:
    n = parse(body(PAYLOAD))
    assert (n.receiver, n.status, n.truncated) == ("technician-ops", "firing", 0)
    [alert] = n.alerts
    assert alert.labels == ALERT["labels"] and alert.key == "1a30ba71cca2921f@2024-05-01T10:00:00.123456789+02:00"
    older = copy.deepcopy(PAYLOAD)
    del older["truncatedAlerts"]  # Alertmanager before 0.22 did not send it
    assert parse(body(older)).truncated == 0


def _with(path: str, value: Any) -> bytes:
    payload = copy.deepcopy(PAYLOAD)
    target: Any = payload
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if key.isdigit() else target[key]
    last: Any = int(keys[-1]) if keys[-1].isdigit() else keys[-1]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return body(payload)


@pytest.mark.parametrize("raw,message", [
    (b"not json", "the body is not JSON"),
    (b"\xff\xfe", "the body is not JSON"),
    (b"[1, 2]", "the body is not a JSON object"),
    (b'{"version": "4", "x": NaN}', "NaN is not a JSON number"),
    (_with("version", "3"), "version must be \"4\""),
    (_with("version", 4), "version must be \"4\""),
    (_with("status", "pending"), "status must be one of firing, resolved"),
    (_with("receiver", 1), "receiver must be a string"),
    (_with("truncatedAlerts", -1), "truncatedAlerts must be a whole number"),
    (_with("commonLabels", ["a"]), "commonLabels must be an object of strings"),
    (_with("alerts", {}), "alerts must be a list"),
    (_with("alerts.0", "x"), "alerts[0] must be an object"),
    (_with("alerts.0.labels", {}), "alerts[0].labels must not be empty"),
    (_with("alerts.0.labels", {"a": 1}), "alerts[0].labels must map names to strings"),
    (_with("alerts.0.fingerprint", "../../etc"), "alerts[0].fingerprint must be hexadecimal"),
    (_with("alerts.0.fingerprint", KeyError), "alerts[0].fingerprint must be a string"),
    (_with("alerts.0.startsAt", "yesterday"), "alerts[0].startsAt must be an RFC 3339 time"),
    (_with("alerts.0.status", "maybe"), "alerts[0].status must be one of firing, resolved"),
])
def test_anything_else_is_refused_naming_the_field(raw: bytes, message: str) -> None:
    with pytest.raises(PayloadError) as exc:
        parse(raw)
    assert message in str(exc.value)


# -- decisions ---------------------------------------------------------------------------------

RUNBOOK = """---
name: {name}
hosts: web
params:
  mountpoint: {{type: string, required: true}}
triggers:
  - alertmanager: {{match: {match}, params: {{mountpoint: "{{{{ labels.mountpoint }}}}"}}, hosts: "{{{{ labels.instance | host }}}}"}}
---

```sh {{name=clean undo=none}}
true
```
{extra}"""
APPROVE = '\n```text {name=ok kind=approve}\nreally?\n```\n'


def _runbook(tmp_path: Path, name: str, match: str = "{alertname: DiskFull}", extra: str = "") -> Any:
    (tmp_path / "runbooks").mkdir(exist_ok=True)
    path = tmp_path / "runbooks" / f"{name}.md"
    path.write_text(RUNBOOK.format(name=name, match=match, extra=extra))
    return load_runbook(path, tmp_path)


def _dispatcher(table: list[Any], seen: set[str] | None = None, rate: tuple[int, float] = (1, 300)) -> Dispatcher:
    def approvals(runbook: Any) -> list[str]:
        return [s.name for s in runbook.steps if s.kind == "approve"]

    return Dispatcher(lambda: table, (seen or set()).__contains__, RateLimit(*rate), approvals)


def _alerts(*alerts: dict[str, Any]) -> Any:
    return parse(body({**PAYLOAD, "alerts": list(alerts)}))


def _alert(fingerprint: str = "aa", **labels: str) -> dict[str, Any]:
    return {**ALERT, "fingerprint": fingerprint, "labels": {**ALERT["labels"], **labels}}


def test_decisions_run_duplicate_no_trigger_and_resolved(tmp_path: Path) -> None:
    table = [_runbook(tmp_path, "clean")]
    dispatcher = _dispatcher(table, seen={"bb@" + ALERT["startsAt"]})
    decisions = dispatcher.decide(_alerts(_alert("aa", extra="x"), _alert("aa"), _alert("bb"),
                                          _alert("cc", alertname="Other"),
                                          {**_alert("dd"), "status": "resolved"}), now=1000.0)
    assert [d.action for d in decisions] == ["run", "duplicate", "duplicate", "no_trigger", "resolved"]
    first = decisions[0]
    assert (first.runbooks, first.params, first.limit) == (["clean"], {"mountpoint": "/var"}, "web1")
    # only the labels matched and read: the 'extra' label never reaches the run or its record
    assert first.labels == {"alertname": "DiskFull", "instance": "web1:9100", "mountpoint": "/var"}
    [job] = first.jobs("technician-ops")
    assert job["kind"] == "run" and "extra" not in json.dumps(job)
    assert job["detail"] == {"receiver": "technician-ops", "fingerprint": "aa", "starts_at": ALERT["startsAt"],
                             "runbook": "clean", "labels": first.labels}


def test_ambiguous_and_missing_labels_are_refused(tmp_path: Path) -> None:
    table = [_runbook(tmp_path, "one"), _runbook(tmp_path, "two", "{alertname: DiskFull, severity: page}")]
    decisions = _dispatcher(table).decide(_alerts(_alert("aa", severity="page")), now=0.0)
    [d] = decisions
    assert (d.action, d.code, d.runbooks) == ("refuse", "ambiguous", ["one", "two"])
    assert len(d.jobs("r")) == 2 and "ambiguous" in str(d.reason)
    lacking = {**_alert("bb"), "labels": {"alertname": "DiskFull", "instance": "web1"}}
    [d] = _dispatcher(table[:1]).decide(_alerts(lacking), now=0.0)
    assert (d.action, d.code) == ("refuse", "labels")
    assert "the alert has no label 'mountpoint'" in str(d.reason)


def test_the_rate_limit_counts_starts_in_a_sliding_window(tmp_path: Path) -> None:
    dispatcher = _dispatcher([_runbook(tmp_path, "clean")], rate=(2, 60))
    decisions = dispatcher.decide(_alerts(_alert("a1"), _alert("a2"), _alert("a3")), now=100.0)
    assert [d.action for d in decisions] == ["run", "run", "refuse"]
    assert decisions[2].code == "rate_limited" and "--rate 2/1m" in str(decisions[2].reason)
    # nothing taken until committed: a notification answered 429 leaves no trace
    assert [d.action for d in dispatcher.decide(_alerts(_alert("a4")), now=101.0)] == ["run"]
    dispatcher.commit(decisions, now=100.0)
    assert [d.action for d in dispatcher.decide(_alerts(_alert("a5")), now=159.0)] == ["refuse"]
    assert [d.action for d in dispatcher.decide(_alerts(_alert("a6")), now=160.0)] == ["run"]


def test_a_runbook_with_an_approve_step_is_held(tmp_path: Path) -> None:
    [d] = _dispatcher([_runbook(tmp_path, "careful", extra=APPROVE)]).decide(_alerts(_alert("aa")), now=0.0)
    assert d.action == "hold" and "step(s) ok need approval" in str(d.reason)


# -- the journal -------------------------------------------------------------------------------


def _job(n: int, key: str) -> dict[str, Any]:
    return {"t": "job", "id": f"id{n}", "at": 1.0e9 + n, "key": key, "job": {"kind": "run", "runbook": "r"}}


def test_the_journal_keeps_what_was_accepted_until_done_across_reopening(tmp_path: Path) -> None:
    import time

    directory = tmp_path / "serve"
    journal = Journal(directory)
    assert journal.open().pending == []
    now = time.time()
    journal.append([{**_job(1, "k1"), "at": now}, {**_job(2, "k2"), "at": now}, {**_job(3, "k3"), "at": now}])
    journal.append([{"t": "started", "id": "id1", "run_id": "r1"}, {"t": "done", "id": "id2", "outcome": "x"},
                    {"t": "resolved", "key": "k3", "at": now}])
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(journal.path.stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="another 'technician-ops serve' uses"):
        Journal(directory).open()
    journal.close()
    with journal.path.open("ab") as fh:
        fh.write(b'{"t": "job", "id": "torn", "at"')  # a crash mid-write
    again = Journal(directory)
    recovered = again.open()
    assert [(p.id, p.run_id) for p in recovered.pending] == [("id1", "r1"), ("id3", None)]
    assert recovered.torn == 1
    assert again.is_seen("k1") and again.is_seen("k2") and not again.is_seen("k3")  # k3 resolved: forgotten
    lines = [json.loads(line) for line in again.path.read_text().splitlines()]
    assert [e["t"] for e in lines] == ["seen", "job", "started", "job"]  # compacted: done and torn lines gone
    again.close()


def test_the_journal_forgets_old_keys_and_keeps_at_most_max_keys(tmp_path: Path) -> None:
    import time

    journal = Journal(tmp_path / "serve", retention=3600, max_keys=3, compact_every=4)
    journal.open()
    now = time.time()
    journal.append([{"t": "seen", "key": "old", "at": now - 7200}] +
                   [{"t": "seen", "key": f"k{i}", "at": now} for i in range(4)])
    assert list(journal.seen) == ["k1", "k2", "k3"]  # the oldest beyond max_keys dropped
    assert len(journal.path.read_text().splitlines()) == 3  # compacted after 4 lines
    journal.close()


def test_a_journal_that_cannot_be_written_is_a_storage_error(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "serve")
    journal.open()
    journal.close()
    with pytest.raises(StorageError):
        journal.append([_job(1, "k")])


# -- the alert in the record's origin --------------------------------------------------------


def test_the_origin_carries_the_alert_only_with_origin_alertmanager() -> None:
    detail = {"receiver": "ops", "fingerprint": "1a30", "starts_at": "2024-05-01T10:00:00Z", "alert_id": "x",
              "runbook": "clean", "labels": {"alertname": "DiskFull"}}
    got = origin({"TECHNICIAN_OPS_ORIGIN": "alertmanager", "TECHNICIAN_OPS_ORIGIN_DETAIL": json.dumps(detail),
                  "CI": "true"}, interactive=False)
    assert got == {"type": "alertmanager", "system": "alertmanager", "run_id": None, "url": None, "alert": detail}
    assert "alert" not in origin({"TECHNICIAN_OPS_ORIGIN_DETAIL": json.dumps(detail)}, interactive=False)
    assert origin({"TECHNICIAN_OPS_ORIGIN": "cron", "TECHNICIAN_OPS_ORIGIN_DETAIL": "{}"}, interactive=False) == \
        {"type": "cron", "system": None, "run_id": None, "url": None}


@pytest.mark.parametrize("text,problem", [
    (None, "no alert detail was given"),
    ("[1]", "not a JSON object"),
    ("{", "not JSON"),
    (json.dumps({"fingerprint": "zz"}), "fingerprint is not hexadecimal"),
    (json.dumps({"labels": {"a b": "x"}}), "labels are not label names to strings"),
    (json.dumps({"labels": {"a": "x" * 2000}}), "labels are not label names to strings"),
    (json.dumps({"labels": {f"l{i}": "x" for i in range(65)}}), "at most 64 labels"),
    (json.dumps({"receiver": "x" * 300}), "receiver is not a string of at most 256"),
    (json.dumps({"password": "x"}), "unknown keys (password)"),
    (json.dumps({"labels": {"a": "x" * 1000 for _ in range(1)}, "receiver": "y" * 200}) + " " * 17000, "larger than"),
])
def test_an_alert_detail_of_another_shape_is_left_out_and_said(text: str | None, problem: str) -> None:
    detail, why = alert_detail(text)
    assert detail is None and problem in str(why)
    got = origin({"TECHNICIAN_OPS_ORIGIN": "alertmanager", **({"TECHNICIAN_OPS_ORIGIN_DETAIL": text} if text else {})},
                 interactive=False)
    assert got["alert"] is None and problem in got["alert_problem"]


# -- command-line values -----------------------------------------------------------------------


def test_bind_rate_and_loopback() -> None:
    assert parse_bind("127.0.0.1:9095") == ("127.0.0.1", 9095)
    assert parse_bind("[::1]:80") == ("::1", 80)
    for bad in ("9095", "host:", "host:70000", ":80"):
        with pytest.raises(UsageError):
            parse_bind(bad)
    assert parse_rate("1/5m") == (1, 300.0) and parse_rate("10/1h") == (10, 3600.0) and parse_rate("3/30") == (3, 30.0)
    for bad in ("0/5m", "x/5m", "5m", "1/soon"):
        with pytest.raises(UsageError):
            parse_rate(bad)
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.org"))


def test_secrets_come_from_a_private_file_or_the_environment_never_an_argument(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token-0123456789\n")
    token.chmod(0o640)
    assert read_secret(str(token), "UNUSED", "token") == b"s3cret-token-0123456789"
    token.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by every user"):
        read_secret(str(token), "UNUSED", "token")
    token.chmod(0o600)
    token.write_text("short")
    with pytest.raises(ConfigError, match="at least 16 printable characters"):
        read_secret(str(token), "UNUSED", "token")
    monkeypatch.setenv("TECHNICIAN_OPS_SERVE_TOKEN", "from-the-environment-0123")
    assert read_secret(None, "TECHNICIAN_OPS_SERVE_TOKEN", "token") == b"from-the-environment-0123"
    assert "TECHNICIAN_OPS_SERVE_TOKEN" not in os.environ  # read once, then out of reach of every run
    assert read_secret(None, "TECHNICIAN_OPS_SERVE_TOKEN", "token") is None


def test_docs_name_exactly_the_metrics_served() -> None:
    import re

    from technician_ops.serve.metrics import Metrics

    served = {m.name + ("_total" if m.type == "counter" else "") for m in Metrics().registry.collect()}
    doc = (Path(__file__).resolve().parents[2] / "docs" / "serve.md").read_text()
    assert set(re.findall(r"technician_ops_serve_[a-z_]+", doc)) == served
