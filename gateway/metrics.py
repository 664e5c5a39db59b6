"""Prometheus metrics (SPEC §8). Labels are bounded: route name, upstream, meter, scope,
decision, code — never a tenant id.

Each app owns its own registry, so tests can build many gateways in one process.
The metrics every request updates are `gateway.counters`' lock-free ones.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.counters import CounterChild, FastCounter, FastHistogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1.0)
UNIT_POOLS = ("quota", "credits", "overage", "grace")  # what paid a debit, in that order


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._admit_counters: dict[tuple[str, str], tuple[CounterChild, ...]] = {}
        self.requests = FastCounter(
            "gateway_requests", "Requests by route, decision and code",
            ["route", "decision", "code"], registry=r)
        self.request_latency = FastHistogram(
            "gateway_request_duration_seconds", "Time from request to end of response",
            ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.upstream_latency = FastHistogram(
            "gateway_upstream_duration_seconds",
            "Time forwarding to the upstream, until its response has been relayed",
            ["upstream"], buckets=LATENCY_BUCKETS, registry=r)
        self.upstream_errors = Counter(
            "gateway_upstream_errors", "Upstream failures by kind",
            ["upstream", "code"], registry=r)
        self.store_latency = FastHistogram(
            "gateway_store_duration_seconds", "Store call latency", ["op"],
            buckets=STORE_BUCKETS, registry=r)
        self.store_errors = Counter(
            "gateway_store_errors", "Store calls that failed or missed their deadline",
            ["op"], registry=r)
        self.client_disconnects = Counter(
            "gateway_client_disconnects", "Clients that left before the response ended",
            ["route"], registry=r)
        self.in_flight = Gauge(
            "gateway_requests_in_flight", "Requests being proxied now", registry=r)
        self.rules_reloads = Counter(
            "gateway_rules_reloads", "rules.yaml reload attempts", ["result"], registry=r)
        self.decisions = FastCounter(
            "gateway_decisions", "Metering decisions by code and paying scope",
            ["code", "scope"], registry=r)
        self.units = FastCounter(
            "gateway_units_debited", "Units debited by meter and pool", ["meter", "pool"],
            registry=r)
        self.shadow_rejects = Counter(
            "gateway_shadow_would_reject", "Requests shadow mode would have refused",
            ["route", "code"], registry=r)
        self.settlements = Counter(
            "gateway_settlements", "Settlements after the response (refund or settle)",
            ["kind", "meter"], registry=r)
        self.refunded_units = Counter(
            "gateway_refunded_units", "Units given back by refunds and settlements",
            ["meter"], registry=r)
        self.fail_open = Counter(
            "gateway_store_failure_decisions", "Requests decided without the store",
            ["policy"], registry=r)
        self.journal_backlog = Gauge(
            "gateway_journal_backlog", "Fail-open requests waiting to be replayed into Redis",
            registry=r)
        self.journal_replayed = Counter(
            "gateway_journal_replayed", "Fail-open requests replayed into Redis", registry=r)
        # Budget alerts (gateway/billing/alerts.py).
        self.budget_alerts_sent = Counter(
            "gateway_budget_alerts_sent", "Budget alerts delivered by threshold and channel",
            ["threshold", "channel"], registry=r)
        self.budget_alert_failures = Counter(
            "gateway_budget_alert_failures", "Budget alert deliveries that failed (retried "
            "next round)", ["threshold", "channel"], registry=r)
        # --- Stripe usage reporting (gateway/billing/reporter.py) ---
        self.report_backlog = Gauge(
            "gateway_stripe_report_backlog", "Usage-stream entries not yet reported to "
            "Stripe (pending + unread), after the last reporting round", registry=r)
        self.report_lag = Gauge(
            "gateway_stripe_report_lag_seconds", "Age of the oldest usage-stream entry not "
            "yet reported to Stripe", registry=r)
        self.report_failures = Counter(
            "gateway_stripe_report_failures", "Stripe usage reports that did not go out "
            "(retried next round) by reason", ["reason"], registry=r)
        self.meter_events_sent = Counter(
            "gateway_stripe_meter_events_sent", "Stripe meter events delivered (result: "
            "sent, or duplicate = already held by Stripe)", ["meter", "result"], registry=r)
        # Stripe webhooks (gateway/billing/webhooks.py, events.py).
        self.billing_webhooks = Counter(
            "gateway_billing_webhooks", "Stripe webhook events by type and outcome",
            ["type", "outcome"], registry=r)
        self.billing_webhook_problems = Counter(
            "gateway_billing_webhook_problems", "Stripe events the gateway could not map "
            "(unknown_customer, unknown_price, bad_topup)", ["kind"], registry=r)
        self.billing_notifications = Counter(
            "gateway_billing_notifications", "Billing notifications sent to accounts",
            ["kind"], registry=r)

    def count_admit(self, scope: str, meter: str, quota: int, credits: int, overage: int,
                    grace: int) -> None:
        """One admitted, charged debit: the ADMIT decision for the paying scope, and its
        units by pool. One call with the counters bound once per scope and meter (the
        metered request path made up to six lookups and increments here)."""
        bound = self._admit_counters.get((scope, meter))
        if bound is None:
            bound = self._admit_counters[(scope, meter)] = (
                self.decisions.labels("ADMIT", scope),
                *(self.units.labels(meter, pool) for pool in UNIT_POOLS))
        decision, q, c, o, g = bound
        decision.value += 1
        if quota:
            q.value += quota
        if credits:
            c.value += credits
        if overage:
            o.value += overage
        if grace:
            g.value += grace

    def count_settlement(self, kind: str, meter: str, delta: int,
                         pools: Mapping[str, int]) -> None:
        """One settlement applied (at the response, or replayed from the journal):
        units given back, and units charged beyond the reserve where they were paid."""
        self.settlements.labels(kind, meter).inc()
        if delta < 0:
            self.refunded_units.labels(meter).inc(-delta)
        for pool, n in pools.items():
            if n > 0:
                self.units.labels(meter, pool).inc(n)

