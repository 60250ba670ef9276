"""Prometheus collectors, in one place.

The API serves them at /metrics. Celery pool processes are separate processes: when
PROMETHEUS_MULTIPROC_DIR is set (`mailsvc worker --metrics-port`), each writes its samples
there and the worker's main process serves the sum.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

MESSAGES_ACCEPTED = Counter(
    "mailsvc_messages_accepted_total", "Messages accepted by the API.", ["lane"]
)
MESSAGES_SENT = Counter(
    "mailsvc_messages_sent_total", "Messages a provider accepted.", ["provider"]
)
MESSAGES_FAILED = Counter(
    "mailsvc_messages_failed_total",
    "Delivery attempts that failed, by provider and kind (transient or permanent).",
    ["provider", "kind"],
)
HTTP_DURATION = Histogram(
    "mailsvc_http_request_duration_seconds",
    "API request latency, from the first byte received to the response sent.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
