"""Every metric the service exports, declared once, with the contract's names and labels.

With several worker processes, `segments serve` points PROMETHEUS_MULTIPROC_DIR at a fresh
folder before the workers start, so these counters and histograms are summed over all workers.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import TypeVar, cast

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics import MetricWrapperBase

Metric = TypeVar("Metric", bound=MetricWrapperBase)

# Scoring takes tens of microseconds to a few milliseconds: the default buckets start at 5 ms.
FAST_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

REQUEST_DURATION = Histogram(
    "segment_request_duration_seconds",
    "Time from request received to response sent, in seconds, by route template, method and status.",
    ["route", "method", "status"],
    buckets=FAST_BUCKETS,
)
INFERENCE_DURATION = Histogram(
    "segment_inference_duration_seconds",
    "Time spent validating and scoring customers (no storage), in seconds, per request.",
    ["mode"],
    buckets=FAST_BUCKETS,
)
ASSIGNMENTS = Counter(
    "segment_assignments",
    "Customers assigned to a segment (stored or not), by model version and segment key.",
    ["model_version", "segment"],
)
UNKNOWN_CATEGORIES = Counter(
    "segment_unknown_categories",
    "Categorical feature values the model never saw in training (accepted, scored as no category).",
    ["model_version", "feature"],
)
GROUP_COMMIT_ROWS = Histogram(
    "segment_group_commit_rows",
    "Single assignments written per group commit (one transaction); count = commits.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
SUPPRESSED_ASSIGNMENTS = Counter(
    "segment_assignments_suppressed",
    "Assignments scored but not stored because the customer was erased (a tombstone stands).",
)
EVENTS = Counter(
    "segment_events",
    "Purchase events received, by outcome: stored; duplicate (an event id stored before: a "
    "retry); suppressed (the customer is erased, so nothing of theirs is stored).",
    ["outcome"],
)
REFRESHED = Counter(
    "segment_refreshed_customers",
    "Customers the refreshers re-scored, by cause: time (their recency moved them), model (a "
    "model switch), assignment (behaviour loaded in bulk).",
    ["cause"],
)
REFRESH_DURATION = Histogram(
    "segment_refresh_duration_seconds",
    "How long one refresher round took to re-score every customer due (rounds with any).",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
STORE_FAILURES = Counter(
    "segment_store_failures",
    "Requests the database failed, by operation and reason: unavailable (down or unreachable), "
    "timeout (a statement ran past the statement timeout), lock (a lock wait ran past the lock "
    "timeout, or a deadlock), busy (no pooled connection came free).",
    ["operation", "reason"],
)
STORE_UP = Gauge(
    "segment_store_up",
    "1 while the database answers this service, 0 since a call found it down (the most recent "
    "observation of any worker).",
    multiprocess_mode="mostrecent",
)
AUTH_FAILURES = Counter(
    "segment_auth_failures",
    "Requests refused by authentication, by reason: missing (no API key), unknown (a key the "
    "service does not know), scope (a known key without the scope the endpoint needs), "
    "purpose (an advertising key asking for another consent purpose).",
    ["reason"],
)
RATE_LIMITED = Counter(
    "segment_rate_limited",
    "Requests answered 429 rate_limited, by the limit they hit: key (per API key), address "
    "(per client address), auth_failures (an address past its failed authentications).",
    ["limit"],
)

MODEL_LOADS = Counter(
    "segment_model_loads",
    "Model versions this process loaded from the registry to serve or shadow, by outcome "
    "(ok, or failed: the current model kept serving).",
    ["version", "outcome"],
)
SHADOW_ASSIGNMENTS = Counter(
    "segment_shadow_assignments",
    "Live assignments also scored by the shadow model, by the active and shadow segment keys.",
    ["active_version", "shadow_version", "active_segment", "shadow_segment"],
)
SHADOW_AGREEMENTS = Counter(
    "segment_shadow_agreements",
    "Shadow-scored assignments where the shadow model chose the same segment key as the active one.",
    ["active_version", "shadow_version"],
)
SHADOW_DROPPED = Counter(
    "segment_shadow_dropped",
    "Assignments not shadow-scored because the shadow queue was full (the service was overloaded).",
)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition(extra: CollectorRegistry) -> bytes:
    """The text for /metrics: this process's (or all workers') metrics plus `extra` (computed live)."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        counted = generate_latest(registry)
    else:
        counted = generate_latest(REGISTRY)
    return counted + generate_latest(extra)


def labelled(metric: Metric, *values: str) -> Metric:
    """`metric.labels(*values)`, kept: on the request path .labels() costs more than the
    increment it leads to (label values are few: model versions, segments, routes, bins)."""
    return cast(Metric, _labelled(metric, values))


@lru_cache(maxsize=4096)
def _labelled(metric: MetricWrapperBase, values: tuple[str, ...]) -> MetricWrapperBase:
    return metric.labels(*values)
