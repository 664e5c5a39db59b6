"""Counters and histograms for the request path, without prometheus_client's locks.

prometheus_client guards every increment with a threading lock and looks up a
histogram's bucket in a Python loop: ~1.5 µs per update, and a metered request makes
six. The request path runs on one event-loop thread, so these keep plain numbers
(an update is one attribute add; a histogram's bucket is a bisect) and hand them to the
registry as ordinary metric families when Prometheus scrapes.

Same interface as prometheus_client where the gateway uses it: `labels(*values)` →
child with `inc(n)` / `observe(seconds)`. Update them only from the event-loop thread.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self.value += amount


class HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds              # ascending, the last one +Inf
        self.counts = [0] * len(bounds)   # per bucket, not cumulative
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # The first bound >= amount is the bucket `le` that counts it.
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


Child = TypeVar("Child", CounterChild, HistogramChild)


class _Family(Collector, Generic[Child]):
    """One metric with labels; its children live as long as the family (label sets are
    bounded: route, meter, code…)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Child] = {}
        registry.register(self)

    def labels(self, *values: str) -> Child:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} has labels {self.labelnames}, got {values}")
            child = self._children[values] = self._new_child()
        return child

    def _new_child(self) -> Child:
        raise NotImplementedError

    def describe(self) -> Iterator[Metric]:
        yield self._empty()

    def _empty(self) -> Metric:
        raise NotImplementedError


class FastCounter(_Family[CounterChild]):
    def _new_child(self) -> CounterChild:
        return CounterChild()

    def _empty(self) -> Metric:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(values, child.value)
        yield family


class FastHistogram(_Family[HistogramChild]):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry, buckets: Sequence[float]) -> None:
        bounds = tuple(sorted(float(b) for b in buckets))
        if not bounds or bounds[-1] != math.inf:
            bounds = (*bounds, math.inf)
        self.bounds = bounds
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def _empty(self) -> Metric:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation,
                                       labels=self.labelnames)
        for values, child in list(self._children.items()):
            running = 0
            buckets = []
            for bound, count in zip(self.bounds, list(child.counts), strict=True):
                running += count
                buckets.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]
            family.add_metric(values, buckets, child.sum)
        yield family
