"""``GET /metrics``: the server's counters and gauges, in a registry of its own (prometheus_client)."""

from __future__ import annotations

from technician_ops.serve.dispatch import REASONS


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry(auto_describe=True)
        p = "technician_ops_serve_"
        self.requests = Counter(p + "requests", "Webhook requests answered, by HTTP status.", ["code"],
                                registry=self.registry)
        self.received = Counter(p + "alerts_received", "Alerts received in webhook notifications, by status.",
                                ["status"], registry=self.registry)
        self.accepted = Counter(p + "alerts_accepted", "Firing alerts accepted to run (or to wait for approval), "
                                "by runbook.", ["runbook"], registry=self.registry)
        self.refused = Counter(p + "alerts_refused", "Firing alerts not run, by reason.", ["reason"],
                               registry=self.registry)
        self.duplicates = Counter(p + "alerts_duplicate", "Repeated notifications of an alert already decided.",
                                  registry=self.registry)
        self.runs = Counter(p + "runs", "Runs (and held or refused records) finished, by runbook and outcome.",
                            ["runbook", "outcome"], registry=self.registry)
        self.queue_depth = Gauge(p + "queue_depth", "Accepted runs waiting for a worker.", registry=self.registry)
        self.workers = Gauge(p + "workers", "Run workers.", registry=self.registry)
        self.busy = Gauge(p + "workers_busy", "Run workers running a runbook now.", registry=self.registry)
        for status in ("firing", "resolved"):
            self.received.labels(status)
        for reason in REASONS:
            self.refused.labels(reason)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))
