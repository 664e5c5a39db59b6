"""The gateway's long-lived state: built at start-up, owned by the server, shared by the
public and admin apps. Rules-derived state is one immutable `Routing`, swapped whole on
reload, so an in-flight request keeps the rules it started with.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from gateway.billing.alerts import AlertChecker  # budget alerts
from gateway.billing.reporter import Reporter  # Stripe usage reporting
from gateway.billing.stripe_client import build_stripe_client
from gateway.config import Settings
from gateway.identity.cache import KeyCache
from gateway.identity.forwarded import ForwardedFor
from gateway.identity.registry import KeyRegistry
from gateway.metering.engine import MeteringEngine
from gateway.metering.journal import Journal
from gateway.metering.ledger import Ledger
from gateway.metering.pending import PendingSettlement
from gateway.metering.plans import PlanTables
from gateway.metrics import Metrics
from gateway.proxy.forward import Target
from gateway.proxy.headers import UpstreamHeaderPolicy
from gateway.proxy.transport import build_transport
from gateway.rules import Rules, RulesError, load_rules
from gateway.store import Store, open_store
from gateway.tasks import stop_task

log = logging.getLogger("gateway")


@dataclass(frozen=True, slots=True)
class Routing:
    """Everything derived from one rules.yaml, computed once."""

    rules: Rules
    targets: dict[str, Target]
    header_policies: dict[str, UpstreamHeaderPolicy]
    key_headers: tuple[str, ...]
    forwarded: ForwardedFor
    user_header: bytes | None
    workspace_header: bytes | None
    tables: PlanTables


def build_routing(rules: Rules) -> Routing:
    targets: dict[str, Target] = {}
    policies: dict[str, UpstreamHeaderPolicy] = {}
    key_headers = tuple(h.lower() for h in rules.identity.api_key_headers)
    drop = frozenset(h.encode() for h in key_headers)
    for name, upstream in rules.upstreams.items():
        parts = urlsplit(upstream.url)
        host = parts.netloc.encode("idna")
        targets[name] = Target(
            name=name,
            url=httpx.URL(upstream.url.rstrip("/")),
            host_header=host,
            timeouts={"connect": upstream.connect_timeout_s, "read": upstream.timeout_s,
                      "write": upstream.timeout_s, "pool": upstream.timeout_s},
        )
        policies[name] = UpstreamHeaderPolicy(host=host, drop=drop)
    ident = rules.identity
    return Routing(
        rules=rules,
        targets=targets,
        header_policies=policies,
        key_headers=key_headers,
        forwarded=ForwardedFor(tuple(ident.trusted_proxies)),
        user_header=ident.user_header.lower().encode() if ident.user_header else None,
        workspace_header=(ident.workspace_header.lower().encode()
                          if ident.workspace_header else None),
        tables=PlanTables.build(rules),
    )


class Runtime:
    """Clients and caches for one gateway process."""

    def __init__(
        self,
        settings: Settings,
        rules: Rules,
        store: Store | None = None,
        prepare: Callable[[Rules], Rules] | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.settings = settings
        # Applied to every load, the first and each reload (the demo points upstreams
        # at its own ports this way).
        self.prepare = prepare or (lambda r: r)
        self.routing = build_routing(self.prepare(rules))
        self.store = store or open_store(settings.redis_url, deadline_s=settings.store_deadline_s)
        self.metrics = Metrics()
        self.transport: httpx.AsyncBaseTransport = build_transport(
            settings.upstream_transport, max_connections=settings.max_upstream_connections)
        self.registry = KeyRegistry(self.store)
        self.key_cache = KeyCache(self.registry, ttl_s=settings.key_cache_ttl_s,
                                  observe=self._observe_store)
        self.engine = MeteringEngine(
            self.store, clock_ms=clock_ms, observe_store=self._observe_store,
            observe_debit=self.metrics.store_latency.labels("debit").observe,
            usage_retention_ms=max(int(settings.usage_retention_days * 86_400_000), 0))
        self.ledger = Ledger(self.store, self.engine.scripts)
        self.journal = Journal(settings.journal_path or None)
        self.stripe = build_stripe_client(settings)
        self._replayer: asyncio.Task[None] | None = None
        self._clock_task: asyncio.Task[None] | None = None
        # --- budget alerts (gateway/billing/alerts.py) ---
        self.alert_checker = AlertChecker(self)
        self._alert_task: asyncio.Task[None] | None = None
        # --- Stripe usage reporting (gateway/billing/reporter.py) ---
        self.reporter: Reporter | None = None
        self._reporter_task: asyncio.Task[None] | None = None
        self.clock_ms = clock_ms
        self.ready = False

    def _observe_store(self, op: str, seconds: float, ok: bool) -> None:
        self.metrics.store_latency.labels(op).observe(seconds)
        if not ok:
            self.metrics.store_errors.labels(op).inc()

    @property
    def rules(self) -> Rules:
        return self.routing.rules

    async def start(self) -> None:
        log.info("store: %s", self.store.description)
        self._replayer = asyncio.get_running_loop().create_task(self._replay_journal())
        self._clock_task = asyncio.get_running_loop().create_task(self.engine.keep_clock())
        # --- budget alerts: the checker task (alert_interval_s <= 0 turns it off) ---
        if self.settings.alert_interval_s > 0:
            self._alert_task = asyncio.get_running_loop().create_task(
                self.alert_checker.run_forever())
        # --- Stripe usage reporting: the reporter task (needs STRIPE_API_KEY;
        # report_interval_s <= 0 turns it off) ---
        if self.stripe is not None and self.settings.report_interval_s > 0:
            self.reporter = Reporter(self.store, self.stripe, self.metrics,
                                     interval_s=self.settings.report_interval_s,
                                     hold_s=self.settings.report_hold_s)
            self._reporter_task = asyncio.get_running_loop().create_task(
                self.reporter.run_forever())
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        await stop_task(self._replayer)
        await stop_task(self._clock_task)
        # --- budget alerts: stop the checker ---
        await stop_task(self._alert_task)
        self._alert_task = None
        await self.alert_checker.close()
        # --- Stripe usage reporting: stop the reporter (what is unsent stays pending) ---
        await stop_task(self._reporter_task)
        self._reporter_task = None
        await self.replay_journal()  # last chance; what is left stays in the file
        await self.transport.aclose()
        await self.store.close()

    async def replay_journal(self) -> int:
        """Replay the journal into the store (fail-open usage, settlements the store
        could not take); returns how many entries were."""
        if not len(self.journal):
            return 0
        routing = self.routing
        done = await self.journal.replay(
            self.engine, routing.rules, routing.tables,
            on_replayed=self.metrics.journal_replayed.inc,
            on_settled=lambda p, s: self.metrics.count_settlement(p.kind, p.meter, s.delta,
                                                                  s.pools))
        self.metrics.journal_backlog.set(len(self.journal))
        if done:
            log.info("replayed %d journal entries into the store; %d left", done,
                     len(self.journal))
        return done

    def defer_settlement(self, pending: PendingSettlement) -> None:
        """A settlement the store could not take: journaled, replayed with the rest."""
        self.journal.record_settlement(pending)
        self.metrics.journal_backlog.set(len(self.journal))

    async def _replay_journal(self) -> None:
        while True:
            await asyncio.sleep(self.settings.journal_replay_interval_s)
            try:
                await self.replay_journal()
            except Exception:  # the loop must outlive any one bad entry
                log.exception("journal replay failed")

    def reload(self, path: str | None = None) -> list[str]:
        """Load rules again; on any problem keep the old rules and return the problems."""
        source = path or self.settings.rules_path
        try:
            rules = self.prepare(load_rules(source))
            routing = build_routing(rules)
        except RulesError as exc:
            self.metrics.rules_reloads.labels("refused").inc()
            return [str(p) for p in exc.problems]
        except OSError as exc:
            self.metrics.rules_reloads.labels("refused").inc()
            return [f"{source}: {exc.strerror or exc}"]
        self.routing = routing
        self.metrics.rules_reloads.labels("ok").inc()
        log.info("rules reloaded from %s", source)
        return []
