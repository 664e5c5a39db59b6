"""The metering engine: the workspace → user cascade over the debit script, and settlement.

Common path: one round trip (the paying account's script). A workspace without a plan
answers NO_PLAN, which is remembered for a few seconds so its members' requests go
straight to their own budget.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from gateway.caller import Caller
from gateway.errors import GatewayError, StoreUnavailable
from gateway.metering.accounts import Account, Scope
from gateway.metering.pending import PendingSettlement
from gateway.metering.plans import BUCKETS, PlanTables, key_window_spec
from gateway.metering.scripts import Scripts
from gateway.metering.verdict import (
    ADMIT,
    DUPLICATE,
    EXPIRED,
    NO_PLAN,
    PASSED,
    REPLAYED,
    REUSED,
    Decision,
    Leg,
    refuse,
)
from gateway.store import Store
from gateway.store.connect import reraise
from gateway.store.pipe import RedisPipe, ReplyError
from gateway.store.resp import OPEN, CommandTemplate

if TYPE_CHECKING:
    from gateway.rules import Rules

log = logging.getLogger("gateway.metering")

NO_PLAN_TTL_S = 5.0   # a workspace that gets a plan is charged first within this
# A debit Redis starts later than this share of the gateway's deadline for it changes
# nothing (EXPIRED): the rest of the deadline is for its reply to reach the gateway, so a
# debit that charged is never one whose caller was answered 503 (or admitted without a
# charge and journaled, failing open). A Redis that stalls and then catches up runs
# every queued debit late, and each does nothing.
CUTOFF_SHARE = 0.8
CLOCK_SYNC_S = 60.0


@dataclass(frozen=True, slots=True)
class Settled:
    """What a settlement moved: units in all, and units per pool (negative: given back)."""

    delta: int
    pools: dict[str, int]


class MeteringEngine:
    def __init__(
        self,
        store: Store,
        *,
        clock_ms: Callable[[], int] | None = None,
        observe_store: Callable[[str, float, bool], None] | None = None,
        observe_debit: Callable[[float], None] | None = None,
        usage_retention_ms: int = 0,
    ) -> None:
        self.store = store
        self.usage_retention_ms = usage_retention_ms  # usage records; 0 = keep
        self.scripts = Scripts.register(store)
        self.clock_ms = clock_ms            # tests inject time; production uses Redis TIME
        self._no_plan: dict[str, float] = {}
        self._keys: dict[Account, list[str]] = {}
        self._templates: dict[tuple[Any, ...], tuple[tuple[Account, CommandTemplate], ...]] = {}
        # The rules the templates are made from (a snapshot: rules and their tables).
        self._prepared_for: tuple[Rules | None, PlanTables | None] = (None, None)
        self._accounts: dict[Scope, dict[str, Account]] = {"workspace": {}, "user": {}}
        self._observe = observe = observe_store or (lambda op, s, ok: None)
        # A debit that succeeded, observed without the op and outcome to look up (the
        # metered request path's own histogram child, bound once).
        self._observe_debit = observe_debit or (lambda s: observe("debit", s, True))
        self._late_ms: float | None = None  # Redis' clock minus ours, plus the deadline

    def _now_arg(self) -> bytes:
        return b"%d" % self.clock_ms() if self.clock_ms is not None else b""

    def _not_after(self) -> bytes:
        """The Redis time after which this debit must do nothing (see debit.lua)."""
        late = self._late_ms
        return b"" if late is None else b"%d" % (time.monotonic() * 1000 + late)

    async def sync_clock(self) -> None:
        """Measure Redis' clock against ours (TIME, halfway through the round trip; our
        monotonic clock, so a step of the system clock does not move the cutoff)."""
        t0 = time.monotonic()
        reply = await self.store.read(lambda: self.store.client.time())
        t1 = time.monotonic()
        if isinstance(reply, dict):  # a Cluster answers per node
            reply = next(iter(reply.values()))
        seconds, micros = reply
        offset_ms = int(seconds) * 1000 + int(micros) / 1000 - (t0 + t1) * 500
        # Our clock plus this is a debit's cutoff in Redis' clock (one addition on every
        # request).
        self._late_ms = offset_ms + self.store.deadline_s * 1000 * CUTOFF_SHARE

    async def keep_clock(self) -> None:
        """Keep the clock offset fresh (a task of the running gateway)."""
        while True:
            try:
                await self.sync_clock()
            except Exception as exc:  # the store is down: keep the last offset
                log.warning("could not read Redis' clock: %s", exc)
            await asyncio.sleep(CLOCK_SYNC_S)

    async def _timed(self, op: str, call: Awaitable[Any]) -> Any:
        """Await one store call, its latency observed (op: debit, settle…)."""
        t0 = time.perf_counter()
        ok = False
        try:
            result = await call
            ok = True
            return result
        finally:
            self._observe(op, time.perf_counter() - t0, ok)

    async def admit(
        self,
        rules: Rules,
        tables: PlanTables,
        caller: Caller,
        *,
        meter: str,
        units: int,
        route: str,
        request_id: str,
        idempotent: bool,
        enforce: bool,
        replay: bool = False,
        fingerprint: str = "",
        settles: bool = False,
    ) -> Decision:
        """Debit `units` of `meter` from the first account that admits them.

        With `idempotent`, `request_id` names the request (`fingerprint`: its method,
        path and cost): a repeat is answered from the first debit and charged nothing, a
        repeat that is another request is refused (409 REQUEST_ID_REUSED). `settles`: a
        settlement will follow (the caller must then settle it, whatever the outcome).
        """
        rid = request_id if idempotent else ""
        # Common case (a single Redis, no client request id): the cascade's commands
        # from templates made once per caller, route and cost.
        fast = self.store.pipe is not None and not rid and not replay
        cascade: Sequence[tuple[Account, CommandTemplate | tuple[list[str], list[Any]]]]
        if fast:
            cascade = self._prepared(rules, tables, caller, meter, units, route, enforce,
                                     settles)
        else:
            cascade = self._cascade(rules, tables, caller, meter, units, route, rid,
                                    enforce, replay, fingerprint, settles)
        legs: list[Leg] = []
        shadow = False
        marked: Account | None = None  # an account that remembered refusing this id
        for account, command in cascade:
            followed = account.scope == "workspace"  # the user's own budget is next
            if followed and self._no_plan.get(account.id, 0.0) >= time.monotonic():
                continue
            if type(command) is CommandTemplate:  # the fast cascade's (never a replay)
                # (_now_arg and _not_after written out: this runs on every metered request.)
                late = self._late_ms
                clock = self.clock_ms
                packed = command.fill3(
                    b"" if clock is None else b"%d" % clock(), request_id.encode(),
                    b"" if late is None else b"%d" % (time.monotonic() * 1000 + late))
                # Awaited right here, not in a coroutine of its own (every layer between
                # the request and the reply costs twice: on the way out and on the way back).
                pipe = self.store.pipe
                assert pipe is not None  # (the fast cascade is made only for one)
                t0 = time.perf_counter()
                try:
                    reply = await pipe.submit(packed, self.store.deadline_s)
                except Exception as exc:
                    reply = await self._debit_failed(exc, packed, t0)
                else:
                    self._observe_debit(time.perf_counter() - t0)
            else:
                keys, argv = cast(tuple[list[str], list[Any]], command)
                not_after = b"" if replay else self._not_after()
                reply = await self._timed("debit", self.store.script(
                    self.scripts.debit, keys, [self._now_arg(), *argv, request_id,
                                               int(settles), not_after]))
            leg = Leg.parse(account, reply)
            verdict = leg.verdict
            if verdict in (ADMIT, DUPLICATE):
                return Decision(True, units, leg, verdict == ADMIT, None, None, [*legs, leg])
            if verdict == EXPIRED:  # (its caller has been answered 503 already)
                raise StoreUnavailable("the store answered after the deadline")
            if verdict == NO_PLAN:
                if followed:
                    self._no_plan[account.id] = time.monotonic() + NO_PLAN_TTL_S
                    self._trim_no_plan()
                continue
            if verdict == PASSED:
                continue  # refused this request id before: the next account decides
            if verdict == REUSED:
                return Decision(admitted=False, units=units, error=GatewayError(
                    "REQUEST_ID_REUSED", f"X-Request-Id {request_id} was already used for "
                    "another request; send a new id for a new request"))
            if verdict == REPLAYED:
                return Decision(admitted=False, units=units, error=GatewayError(
                    "REQUEST_ID_REUSED", f"X-Request-Id {request_id} was retried too often; "
                    "a new request needs a new id"))
            if not leg.enforce:
                # Shadow mode decides here: proxy, charge nobody (not the next account
                # either), and count what it would have refused.
                if not leg.code:
                    return Decision(admitted=True, units=units, leg=leg, legs=[*legs, leg])
                shadow = True
                legs.append(leg)
                break
            if rid and followed:
                marked = account  # debit.lua remembered refusing it (ARGV 20)
            legs.append(leg)
            if leg.key_refused:
                break  # the key's own limit: no other account may count it afresh
        if not legs:
            # Nobody has a plan and there is no default plan: nothing to charge.
            return Decision(admitted=True, units=units)
        billing = rules.billing
        error = refuse(legs, billing.upgrade_url if billing else None,
                       billing.top_up_url if billing else None)
        if shadow:
            # A shadow plan refused: count what it would have done, never block on it.
            return Decision(admitted=True, units=units, leg=legs[-1], legs=legs,
                            shadow_code=error.code)
        if marked is not None:
            # Nobody paid: the mark would send a retry past an account that may admit it
            # by then. Only a refusal followed by another account's payment keeps it.
            await self.store.call(self.store.client.delete(
                marked.request_key(id_record(caller, rid))))
        return Decision(admitted=False, units=units, legs=legs, error=error)

    async def _debit_failed(self, exc: Exception, command: bytes, t0: float) -> Any:
        """The rest of a pipelined debit whose reply was an error: NOSCRIPT (Redis
        restarted or was flushed) loads the script and sends the debit again, which is
        charged once (a script Redis did not know did not run); anything else is the
        store failing (StoreUnavailable). Its latency is observed either way."""
        store = self.store
        ok = False
        try:
            if not isinstance(exc, ReplyError):
                raise exc
            pipe = cast(RedisPipe, store.pipe)
            reply = await pipe.after_noscript(exc, self.scripts.debit, command,
                                              store.deadline_s)
            ok = True
            return reply
        except Exception as failed:
            reraise(failed)
        finally:
            self._observe("debit", time.perf_counter() - t0, ok)

    def _cascade(self, rules: Rules, tables: PlanTables, caller: Caller, meter: str,
                 units: int, route: str, rid: str, enforce: bool, replay: bool,
                 fingerprint: str, settles: bool
                 ) -> list[tuple[Account, tuple[list[str], list[Any]]]]:
        """The accounts to try in order (workspace, then user), each with the debit's
        keys and the ARGV between the clock and the request id (see _debit_argv)."""
        out = []
        for account, plan in self._accounts_of(rules, caller):
            flag = int(account.scope == "workspace" and bool(rid))
            keys = self._debit_keys(account)
            if rid:  # KEYS[5]: this request's id record, in the caller's own namespace
                keys = [*keys[:4], account.request_key(id_record(caller, rid)), *keys[5:]]
            argv = self._debit_argv(rules, tables, caller, plan, flag, meter, units, route,
                                    rid, enforce, replay, fingerprint)
            out.append((account, (keys, argv)))
        return out

    def _prepared(self, rules: Rules, tables: PlanTables, caller: Caller, meter: str,
                  units: int, route: str, enforce: bool, settles: bool
                  ) -> tuple[tuple[Account, CommandTemplate], ...]:
        """The cascade with each account's debit as a template open in the clock, the
        request id and the deadline: made on a caller's first request of a route and
        cost, after that one dict lookup. Kept per rules snapshot (a reload starts over,
        so no entry outlives the plans it was made from) and bounded."""
        if tables is not self._prepared_for[1] or rules is not self._prepared_for[0]:
            self._prepared_for = (rules, tables)
            self._templates = {}
        # (What of the caller a debit names, flat: hashing a Caller calls Python code.)
        cache_key = (caller.user, caller.workspace, caller.key_id, caller.key_limit,
                     caller.key_window_s, caller.test, route, meter, units, enforce, settles)
        cascade = self._templates.get(cache_key)
        if cascade is None:
            if len(self._templates) > 100_000:  # bounded: start over
                self._templates.clear()
            cascade = self._templates[cache_key] = tuple(
                (account, self._template(rules, tables, caller, account, plan, meter, units,
                                         route, enforce, settles))
                for account, plan in self._accounts_of(rules, caller))
        return cascade

    def _template(self, rules: Rules, tables: PlanTables, caller: Caller, account: Account,
                  plan: str, meter: str, units: int, route: str, enforce: bool,
                  settles: bool) -> CommandTemplate:
        keys = self._debit_keys(account)
        return CommandTemplate([
            "EVALSHA", self.scripts.debit.sha, len(keys), *keys,
            OPEN, *self._debit_argv(rules, tables, caller, plan, 0, meter, units, route, "",
                                    enforce, False, ""),
            OPEN, int(settles), OPEN])

    def _accounts_of(self, rules: Rules, caller: Caller) -> list[tuple[Account, str]]:
        """Who may pay, in order, each with its default plan: the caller's workspace (if
        any), then the caller."""
        out = []
        if caller.workspace:
            out.append((self._account("workspace", caller.workspace),
                        rules.defaults.workspace_plan or ""))
        out.append((self._account("user", caller.user), rules.defaults.user_plan or ""))
        return out

    def _debit_argv(self, rules: Rules, tables: PlanTables, caller: Caller, plan: str,
                    flag: int, meter: str, units: int, route: str, rid: str, enforce: bool,
                    replay: bool, fingerprint: str) -> list[Any]:
        """debit.lua's ARGV 2-20 (ARGV 1 is the clock, 21-23 the request id, whether a
        settlement follows and the deadline): `plan` is the account's default plan,
        `flag` says whether a refusal is to be remembered for the request id."""
        return [units, meter, rules.meters[meter].pico_usd_per_unit, tables.by_meter[meter],
                plan, _own_key_windows(caller), BUCKETS, rid, route, caller.key_id or "",
                caller.user, int(caller.test), int(enforce),
                rules.billing.inactive if rules.billing else "fallback",
                f"k:{caller.key_id}:", int(replay), self.usage_retention_ms, fingerprint,
                flag]

    def _account(self, scope: Scope, account_id: str) -> Account:
        """The account object, made once (bounded) rather than on every request."""
        accounts = self._accounts[scope]
        account = accounts.get(account_id)
        if account is None:
            if len(accounts) > 100_000:  # bounded: start over
                accounts.clear()
            account = accounts[account_id] = Account(scope, account_id)
        return account

    def _debit_keys(self, account: Account) -> list[str]:
        """The debit script's keys for an account (the request-id key for no id), built
        once per account rather than seven f-strings per request."""
        keys = self._keys.get(account)
        if keys is None:
            if len(self._keys) > 100_000:  # bounded: start over
                self._keys.clear()
            keys = self._keys[account] = [
                account.config_key, account.windows_key, account.credits_key,
                account.usage_stream, account.request_key("-"), account.period_prefix,
                account.day_prefix]
        return keys

    def _trim_no_plan(self) -> None:
        if len(self._no_plan) > 100_000:  # bounded: forget the expired ones
            now = time.monotonic()
            self._no_plan = {k: v for k, v in self._no_plan.items() if v > now}

    async def settle(
        self,
        rules: Rules,
        tables: PlanTables,
        decision: Decision,
        caller: Caller,
        *,
        actual: int,
        kind: str,
        route: str,
        request_id: str,
        model: str = "",
        meter: str,
    ) -> Settled:
        """Move a charged debit to `actual` units (0 = refund)."""
        leg = decision.leg
        if leg is None or not decision.charged:
            return Settled(0, {})
        account = leg.account
        # A replayed debit counted in no window (its time had passed).
        counted = kind != "replay"
        windows = tables.windows.get((leg.plan, meter), "") if counted else ""
        key_windows = ",".join(w for w in (
            _own_key_windows(caller), tables.key_windows.get((leg.plan, meter), "")) if w
        ) if counted else ""
        reply = await self._timed("settle", self.store.script(self.scripts.settle, [
            account.credits_key, account.usage_stream, account.period_key(leg.period),
            account.settled_key(leg.debit_id or request_id), account.day_prefix,
            account.config_key, account.windows_key,
            account.request_key(id_record(caller, request_id)),
        ], [
            self._now_arg(), meter, rules.meters[meter].pico_usd_per_unit, decision.units,
            leg.quota_units, leg.credit_units, leg.credit_micro, leg.overage_units,
            leg.overage_micro, leg.grace_units, actual,
            tables.quota.get((leg.plan, meter), -1), int(tables.overage.get(leg.plan, False)),
            kind, route, model, request_id, caller.key_id or "", caller.user,
            int(caller.test), leg.period, leg.plan, leg.now_ms, self.usage_retention_ms,
            windows, key_windows, f"k:{caller.key_id}:", BUCKETS,
        ]))
        # The reply holds the debit's pools after settlement: {delta, q, c, cm, o, om, g}.
        before = {"quota": leg.quota_units, "credits": leg.credit_units,
                  "overage": leg.overage_units, "grace": leg.grace_units}
        after = {"quota": int(reply[1]), "credits": int(reply[2]),
                 "overage": int(reply[4]), "grace": int(reply[6])}
        return Settled(int(reply[0]), {pool: after[pool] - before[pool] for pool in before
                                       if after[pool] != before[pool]})


    async def settle_pending(self, rules: Rules, tables: PlanTables,
                             pending: PendingSettlement) -> Settled:
        """Apply a settlement the store could not take when it was made (a repeat of one
        that did run moves nothing: settle.lua's marker)."""
        return await self.settle(rules, tables, pending.decision(), pending.caller(),
                                 actual=pending.actual, kind=pending.kind,
                                 route=pending.route, request_id=pending.request_id,
                                 model=pending.model, meter=pending.meter)


def id_record(caller: Caller, request_id: str) -> str:
    """A client's request id in its own namespace: users of one workspace number their
    requests independently ('|' occurs in neither user ids nor request ids)."""
    return f"{caller.user}|{request_id}"


def _own_key_windows(caller: Caller) -> str:
    """The caller's key's own limit as a window spec ("" when it has none)."""
    if caller.key_limit and caller.key_window_s:
        return key_window_spec(caller.key_limit, caller.key_window_s)
    return ""
