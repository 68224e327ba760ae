"""``technician-ops serve``: Alertmanager webhooks in, the mapped runbook run safely (docs/serve.md).

    config.py    where to listen, how many runs, how fast; the token and HMAC secret
    alerts.py    the webhook payload (version 4), checked field by field
    journal.py   accepted alerts on disk before the 202, so nothing accepted is lost
    dispatch.py  one alert -> at most one runbook: match, dedupe, rate limit, approval hold
    server.py    the aiohttp application, the queue and its workers, auth, drain
    metrics.py   what /metrics counts

This package sits above ``api`` (every run, hold and refusal goes through it)
and below ``cli``.  aiohttp is imported only here, and only when serving.
"""
