"""The lock-free request-path metrics read back exactly as prometheus_client's would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.counters import FastCounter, FastHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0)
SAMPLES = [0.0, 0.001, 0.0011, 0.01, 0.05, 0.1, 0.999, 1.0, 1.5, 300.0]


def exposition(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]],
                                                     float]:
    """Every sample of the text exposition, except prometheus_client's _created ones."""
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if not s.name.endswith("_created"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_same_exposition_as_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fc = FastCounter("t_requests", "requests", ["route", "code"], registry=ours)
    pc = Counter("t_requests", "requests", ["route", "code"], registry=theirs)
    fh = FastHistogram("t_latency", "latency", ["route"], registry=ours, buckets=BUCKETS)
    ph = Histogram("t_latency", "latency", ["route"], registry=theirs, buckets=BUCKETS)
    for i, seconds in enumerate(SAMPLES):
        route = f"/r{i % 3}"
        for c in (fc, pc):
            c.labels(route, "OK").inc()
            c.labels(route, "RATE_LIMITED").inc(i)
        for h in (fh, ph):
            h.labels(route).observe(seconds)
    assert exposition(ours) == exposition(theirs)
    assert ours.get_sample_value("t_requests_total", {"route": "/r1", "code": "OK"}) == 3
    assert ours.get_sample_value("t_latency_bucket", {"route": "/r0", "le": "+Inf"}) == 4


def test_metrics_are_listed_before_any_sample() -> None:
    registry = CollectorRegistry()
    FastCounter("t_decisions", "decisions", ["code"], registry=registry)
    FastHistogram("t_store", "store", ["op"], registry=registry, buckets=BUCKETS)
    text = generate_latest(registry).decode()
    assert "# TYPE t_decisions_total counter" in text
    assert "# TYPE t_store histogram" in text


def test_misuse_is_refused() -> None:
    registry = CollectorRegistry()
    counter = FastCounter("t_units", "units", ["meter", "pool"], registry=registry)
    with pytest.raises(ValueError, match="labels"):
        counter.labels("fcu")
    with pytest.raises(ValueError, match="only go up"):
        counter.labels("fcu", "quota").inc(-1)
    with pytest.raises(ValueError, match="Duplicated"):  # the registry still guards names
        FastCounter("t_units", "again", ["meter"], registry=registry)
