"""Overage reporting to Stripe Billing Meters (SPEC §7): at-least-once, never twice.

The debit and settle scripts append one record per money movement to the account's usage
stream `gw:{tag}:usage` in the same atomic step as the debit. This reporter (a task inside
`gateway serve`, and `gateway report` for a one-shot run) turns those records into Stripe
meter events. Nothing here runs on the proxy's hot path.

One round:

1. Discover the streams: SCAN MATCH `gw:*:usage` TYPE stream (every primary on a Cluster).
2. Per stream: create the consumer group `reporter` (XGROUP CREATE … 0 MKSTREAM; BUSYGROUP
   is fine) and take the stream's lease `gw:{tag}:report-lock` (SET NX PX), so two
   replicas (or `serve` and `gateway report`) never work on one stream at once.
3. Read a batch: FIRST this consumer's pending entries (XREADGROUP … ID 0) — an unfinished
   batch from a crash or a failed send, which must go out again with the SAME identifiers —
   and only when none are pending, new ones (`>`), COUNT bounded.
4. Entries of test keys (`test` = "1") are acknowledged without any Stripe call.
   The others are grouped by (meter, billing period, UTC hour of `t`); a group's overage is
   the sum of `o` (negative on settlements and refunds, so a refund nets out its debit).
5. Each group, in stream order: value = its sum + the account's carried credit for that
   meter and period (below). The identifier is deterministic —
   `gw-<sha1(scope:id|meter|period|hour|first entry id|last entry id)>` — so the same
   entries always produce the same identifier. value ≤ 0: nothing to send. Otherwise
   `client.v1.billing.meter_events.create_async` with event_name = the meter's name,
   payload {stripe_customer_id, value}, the identifier, and timestamp = the group's last `t`
   in seconds (clamped into Stripe's 35-day window).
   Usage younger than `hold_s` (GATEWAY_REPORT_HOLD_S) waits for a later round, and so
   does everything from a reserve (a debit record marked `open`) whose settlement record
   (the same `req`) is not in the stream yet, however long its response streams (up to
   OPEN_MAX_S): a reserve and its settlement, which counts in the hour of its debit, go
   out together as their net.
6. Success, or Stripe answering that the identifier already exists (a re-send after a crash:
   it was delivered) → one Lua step XACKs the group's entries and updates the carry.
   Failure (5xx, 429, network, any other refusal) → the entries stay pending, the stream is
   backed off and its round stops; the next round re-sends the very same group.
   No Stripe customer for the account → the entries stay pending, the stream waits, counted
   in `gateway_stripe_report_failures{reason="no_customer"}` and logged once per process.

Carry: Stripe meter events are never sent negative. A group whose net overage is negative
(a refund whose debit went out in an earlier batch) is acknowledged and its amount kept in
`gw:{tag}:report-carry` (field `<meter>|<period>`), which reduces the next positive group of
that meter and period. The carry changes only in the same Lua step as the XACK, so a
re-sent group sees the same carry and the same value.

Crash safety: a crash before the send, between the send and the XACK, or during the XACK
leaves the group pending; the next run rebuilds the same group from the same entries,
sends the same identifier, Stripe answers "already exists", and it is acknowledged.
Limit: Stripe remembers identifiers for at least 24 hours; a batch left unacknowledged
after a successful send for longer than that (reporter down for a day right after a send)
could be counted twice.

Metrics: `gateway_stripe_report_backlog` (entries not yet reported: pending + unread),
`gateway_stripe_report_lag_seconds` (age of the oldest of them),
`gateway_stripe_report_failures{reason}`, `gateway_stripe_meter_events_sent{meter,result}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import stripe

from gateway.billing.customers import Customers
from gateway.errors import StoreUnavailable
from gateway.metering.accounts import Account
from gateway.store import Store

if TYPE_CHECKING:
    from gateway.metrics import Metrics

log = logging.getLogger("gateway.reporter")

GROUP = "reporter"
CONSUMER = "reporter"   # one stable name: a restart must find its own pending entries
STREAM_MATCH = "gw:*:usage"
HOUR_MS = 3_600_000
BATCH = 500              # entries per XREADGROUP
MAX_BATCHES = 20         # per stream per round, so one busy account cannot starve others
LEASE_MS = 300_000       # a stream's lease; renewed after each send
CARRY_TTL_MS = 400 * 86_400_000
MAX_AGE_S = 34 * 86_400  # Stripe takes timestamps up to 35 days old
BACKOFF_MAX_S = 900.0
SCAN = 5000              # entries looked at ahead for reserves' settlements
OPEN_MAX_S = 3600        # a reserve still unsettled after this is billed as it stands
SEND_TIMEOUT_S = 120.0   # the SDK's own retries included; well inside the lease
STORE_DEADLINE_S = 5.0   # background work: more patient than the hot path
# Stripe's answer to a repeated identifier: HTTP 400 invalid_request_error, "An event
# already exists with identifier …" (the fake adds code resource_already_exists).
DUPLICATE_CODES = frozenset({"resource_already_exists", "duplicate_meter_event"})

# XACK a group and set (or clear) the carried credit in one atomic step, then delete
# what is reported: every entry older than the oldest one still pending (or, with none
# pending, than the last one delivered), so a stream holds only unreported usage.
# KEYS: 1 stream 2 carry hash. ARGV: 1 group 2 carry field ("" = none) 3 carry value
# 4 carry TTL ms, 5… entry ids.
ACK_LUA = """
if ARGV[2] ~= '' then
  if ARGV[3] == '0' then
    redis.call('HDEL', KEYS[2], ARGV[2])
  else
    redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
    redis.call('PEXPIRE', KEYS[2], ARGV[4])
  end
end
if #ARGV < 5 then return 0 end
local n = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 5))
local pending = redis.call('XPENDING', KEYS[1], ARGV[1])
local cut = nil
if tonumber(pending[1]) > 0 then
  cut = pending[2]
else
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == ARGV[1] then
      local ms, seq = string.match(info['last-delivered-id'], '^(%d+)-(%d+)$')
      if ms then cut = ms .. '-' .. string.format('%d', tonumber(seq) + 1) end
    end
  end
end
if cut then redis.call('XTRIM', KEYS[1], 'MINID', cut) end
return n
"""
# The lease: renew or release only while it is still ours.
RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def account_of_stream(key: str) -> Account | None:
    """`gw:{ws:ID}:usage` → the workspace, `gw:{u:ID}:usage` → the user."""
    if not (key.startswith("gw:{") and key.endswith("}:usage")):
        return None
    tag = key[4:-len("}:usage")]
    kind, _, ident = tag.partition(":")
    if not ident:
        return None
    if kind == "ws":
        return Account("workspace", ident)
    if kind == "u":
        return Account("user", ident)
    return None


def _id_ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def _int(fields: dict[str, str], name: str) -> int:
    try:
        return int(fields.get(name) or 0)
    except ValueError:
        return 0


@dataclass
class Group:
    """The overage of one account, meter, billing period and hour, over some entries."""

    meter: str
    period: str
    hour: int
    ids: list[str] = field(default_factory=list)
    units: int = 0
    last_t: int = 0

    @property
    def carry_field(self) -> str:
        return f"{self.meter}|{self.period}"

    def identifier(self, account: Account) -> str:
        basis = "|".join((f"{account.scope}:{account.id}", self.meter, self.period,
                          str(self.hour), self.ids[0], self.ids[-1]))
        return "gw-" + hashlib.sha1(basis.encode(), usedforsecurity=False).hexdigest()


def group_entries(entries: list[tuple[str, dict[str, str]]]
                  ) -> tuple[list[str], list[Group]]:
    """Split a batch: ids to acknowledge as they are (test keys, deleted entries) and the
    overage groups, in stream order of their first entry. A pure function of the entries,
    so a re-read batch yields the same groups."""
    skip: list[str] = []
    groups: dict[tuple[str, str, int], Group] = {}
    for entry_id, fields in entries:
        if not fields or fields.get("test") == "1" or not fields.get("meter"):
            skip.append(entry_id)
            continue
        # A settlement or refund counts in the hour of its debit (`dt`), so the two net
        # out in one group instead of billing the reserve and carrying the difference.
        t = _int(fields, "dt") or _int(fields, "t") or _id_ms(entry_id)
        key = (fields["meter"], fields.get("period", ""), t // HOUR_MS)
        g = groups.get(key)
        if g is None:
            g = groups[key] = Group(*key)
        g.ids.append(entry_id)
        g.units += _int(fields, "o")
        g.last_t = max(g.last_t, t)
    return skip, list(groups.values())


def is_duplicate(exc: stripe.StripeError) -> bool:
    """Stripe's refusal of an identifier it already holds: the event was delivered."""
    if not isinstance(exc, stripe.InvalidRequestError):
        return False
    if exc.code in DUPLICATE_CODES:
        return True
    return "already exists with identifier" in (exc.user_message or str(exc) or "")


@dataclass
class RoundResult:
    sent: int = 0           # meter events Stripe accepted
    duplicates: int = 0     # re-sends Stripe already held (counted as delivered)
    acked: int = 0          # entries acknowledged
    failures: int = 0       # Stripe calls that failed (retried next round)
    no_customer: int = 0    # streams waiting for a Stripe customer
    streams: int = 0
    backlog: int = 0        # entries not yet reported after the round
    lag_s: float = 0.0      # age of the oldest of them


class Reporter:
    """See the module docstring."""

    def __init__(self, store: Store, client: stripe.StripeClient,
                 metrics: Metrics | None = None, *, interval_s: float = 60.0,
                 batch: int = BATCH, clock: Callable[[], float] = time.time,
                 hold_s: float = 0.0) -> None:
        self.store = store
        # Usage younger than this waits: a reserve is settled when its response ends,
        # and reporting the debit before its settlement would bill the reserve.
        self.hold_s = hold_s
        self.client = client
        self.customers = Customers(store, client)
        self.metrics = metrics
        self.interval_s = interval_s
        self.batch = batch
        self.clock = clock
        self._retry_at: dict[str, float] = {}   # stream → monotonic time of next attempt
        self._failed: dict[str, int] = {}       # stream → consecutive failed rounds
        self._warned: set[str] = set()          # accounts logged for a missing customer
        c = store.client
        self._ack = c.register_script(ACK_LUA)
        self._renew = c.register_script(RENEW_LUA)
        self._release = c.register_script(RELEASE_LUA)

    # --- the loop -------------------------------------------------------------------
    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.run_once()
            except Exception:  # the loop must outlive a bad round (Redis down, …)
                log.exception("usage reporting round failed")

    async def run_once(self, *, ignore_backoff: bool = False) -> RoundResult:
        """One round over every usage stream."""
        result = RoundResult()
        keys = await self._discover()
        result.streams = len(keys)
        now_mono = time.monotonic()
        for key in keys:
            account = account_of_stream(key)
            if account is None:
                continue
            if not ignore_backoff and self._retry_at.get(key, 0.0) > now_mono:
                continue
            try:
                ok = await self._stream(key, account, result)
            except StoreUnavailable as exc:
                log.warning("usage reporting for %s stopped: %s", key, exc)
                ok = False
            except Exception:  # one bad stream must not stop the others; it stays pending
                log.exception("usage reporting for %s failed", key)
                self._count_failure("error")
                result.failures += 1
                ok = False
            if ok:
                self._failed.pop(key, None)
                self._retry_at.pop(key, None)
            else:
                n = self._failed[key] = self._failed.get(key, 0) + 1
                delay = min(self.interval_s * (2 ** (n - 1)), BACKOFF_MAX_S)
                self._retry_at[key] = now_mono + delay
        await self._measure(keys, result)
        return result

    async def _discover(self) -> list[str]:
        """Every usage stream: SCAN … TYPE stream (redis-py walks every Cluster primary)."""
        found: set[str] = set()
        async with asyncio.timeout(60):
            async for k in self.store.client.scan_iter(match=STREAM_MATCH, count=1000,
                                                       _type="stream"):
                found.add(_text(k))
        return sorted(found)

    # --- one stream -----------------------------------------------------------------
    async def _stream(self, key: str, account: Account, result: RoundResult) -> bool:
        """Report one stream; False when something is left for a later round."""
        c = self.store.client
        try:
            await self._call(c.xgroup_create(key, GROUP, id="0", mkstream=True))
        except StoreUnavailable as exc:
            if "BUSYGROUP" not in str(exc.__cause__):
                raise
        lock = account.key("report-lock")
        token = secrets.token_hex(8)
        if not await self._call(c.set(lock, token, nx=True, px=LEASE_MS)):
            return True  # another reporter has this stream now
        try:
            for _ in range(MAX_BATCHES):
                entries = await self._read(key, "0")    # an unfinished batch first
                if not entries:
                    count = await self._ready(key)
                    entries = await self._read(key, ">", count) if count else []
                if not entries:
                    return True
                if not await self._batch(key, account, entries, lock, token, result):
                    return False
            return True
        finally:
            with contextlib.suppress(StoreUnavailable):
                await self._call(self._release(keys=[lock], args=[token]))

    async def _ready(self, key: str) -> int:
        """How many unread entries may be reported now (at most a batch): those older
        than the hold, up to the first reserve whose settlement has not come yet (found
        among the next SCAN entries; one older than OPEN_MAX_S goes out as it is).

        Counted before reading, so entries held back are never delivered: a pending
        batch is always exactly one that may have gone out, and is re-sent as it was
        (same entries, same identifiers).
        """
        c = self.store.client
        groups = await self._call(c.xinfo_groups(key))
        info = next((g for g in groups if _text(g.get("name")) == GROUP), None)
        last = _text(info.get("last-delivered-id") or "0-0") if info else "0-0"
        raw = await self._call(c.xrange(key, min="-" if last == "0-0" else "(" + last,
                                        count=SCAN))
        rows = [(_text(i), {_text(k): _text(v) for k, v in (f or {}).items()}) for i, f in raw]
        now_ms = self.clock() * 1000
        cutoff_ms = now_ms - self.hold_s * 1000
        closed = {f.get("req") for _, f in rows if f.get("kind") != "debit"}
        ready = 0
        for entry_id, fields in rows[:self.batch]:
            t = _id_ms(entry_id)
            if t > cutoff_ms:
                break
            if (fields.get("kind") == "debit" and fields.get("open") == "1"
                    and fields.get("req") not in closed and now_ms - t < OPEN_MAX_S * 1000):
                break  # its settlement is still to come: bill the two together
            ready += 1
        return ready

    async def _read(self, key: str, start: str, count: int | None = None
                    ) -> list[tuple[str, dict[str, str]]]:
        reply = await self._call(self.store.client.xreadgroup(
            GROUP, CONSUMER, {key: start}, count=count or self.batch))
        if isinstance(reply, dict):  # RESP3
            streams = list(reply.values())
            raw = streams[0][0] if streams and streams[0] else []
        else:
            raw = reply[0][1] if reply else []
        return [(_text(i), {_text(k): _text(v) for k, v in (f or {}).items()})
                for i, f in raw]

    async def _batch(self, key: str, account: Account,
                     entries: list[tuple[str, dict[str, str]]], lock: str, token: str,
                     result: RoundResult) -> bool:
        skip, groups = group_entries(entries)
        carry_key = account.key("report-carry")
        if skip:  # test keys never reach Stripe; deleted entries have nothing to say
            result.acked += await self._ack_group(key, carry_key, "", 0, skip)
        carries: dict[str, int] = {}
        customer: str | None = None
        for g in groups:
            if g.carry_field not in carries:
                raw = await self._call(self.store.client.hget(carry_key, g.carry_field))
                carries[g.carry_field] = int(_text(raw)) if raw is not None else 0
            carry = carries[g.carry_field]
            value = g.units + carry
            if value > 0:
                if customer is None:
                    customer = await self.customers.find(account)
                if customer is None:
                    self._count_failure("no_customer")
                    result.no_customer += 1
                    name = f"{account.scope}:{account.id}"
                    if name not in self._warned:
                        self._warned.add(name)
                        log.warning("usage of %s %s is waiting: the account has no Stripe "
                                    "customer (its overage stays queued until it has one)",
                                    account.scope, account.id)
                    return False
                if not await self._send(account, g, value, customer, result):
                    return False
                new_carry = 0
            else:
                new_carry = value  # ≤ 0: credit for the next positive group
            # A crash here re-sends this group next run; Stripe answers "already exists".
            result.acked += await self._ack_group(key, carry_key, g.carry_field, new_carry,
                                                  g.ids)
            carries[g.carry_field] = new_carry
            if value > 0 and not await self._call(
                    self._renew(keys=[lock], args=[token, LEASE_MS])):
                log.warning("lost the reporting lease of %s; stopping this stream", key)
                return False
        return True

    async def _send(self, account: Account, g: Group, value: int, customer: str,
                    result: RoundResult) -> bool:
        ident = g.identifier(account)
        now = self.clock()
        ts = int(min(max(g.last_t / 1000, now - MAX_AGE_S), now))
        try:
            # A send cut short may still have reached Stripe: the group stays pending and
            # its re-send carries the same identifier.
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await self.client.v1.billing.meter_events.create_async(params={
                    "event_name": g.meter,
                    "payload": {"stripe_customer_id": customer, "value": str(value)},
                    "identifier": ident,
                    "timestamp": ts,
                })
        except TimeoutError:
            self._count_failure("stripe_unavailable")
            result.failures += 1
            log.warning("meter event %s timed out; retried later", ident)
            return False
        except stripe.StripeError as exc:
            if is_duplicate(exc):
                result.duplicates += 1
                if self.metrics is not None:
                    self.metrics.meter_events_sent.labels(g.meter, "duplicate").inc()
                log.info("meter event %s was already delivered; acknowledging", ident)
                return True
            status = getattr(exc, "http_status", None)
            reason = ("rate_limited" if status == 429 else
                      "stripe_unavailable" if status is None or status >= 500 else
                      "rejected")
            self._count_failure(reason)
            result.failures += 1
            log.warning("meter event %s for %s %s (%s, %d units) failed: %s%s; retried "
                        "later", ident, account.scope, account.id, g.meter, value,
                        type(exc).__name__, f" HTTP {status}" if status else "")
            return False
        result.sent += 1
        if self.metrics is not None:
            self.metrics.meter_events_sent.labels(g.meter, "sent").inc()
        return True

    async def _ack_group(self, key: str, carry_key: str, carry_field: str, carry: int,
                         ids: list[str]) -> int:
        n = await self._call(self._ack(keys=[key, carry_key],
                                       args=[GROUP, carry_field, carry, CARRY_TTL_MS, *ids]))
        return int(n)

    def _count_failure(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.report_failures.labels(reason).inc()

    async def _call(self, awaitable: Any) -> Any:
        return await self.store.call(awaitable, STORE_DEADLINE_S)

    # --- backlog and lag --------------------------------------------------------------
    async def _measure(self, keys: list[str], result: RoundResult) -> None:
        """Entries not yet reported (pending + never read) and the oldest one's age."""
        backlog = 0
        oldest_ms: int | None = None
        c = self.store.client
        for key in keys:
            try:
                groups = await self._call(c.xinfo_groups(key))
                info = next((g for g in groups if _text(g.get("name")) == GROUP), None)
                if info is None:
                    continue
                pending = int(info.get("pending") or 0)
                unread = int(info.get("lag") or 0)
                backlog += pending + unread
                first: str | None = None
                if pending:
                    summary = await self._call(c.xpending(key, GROUP))
                    if summary.get("min") is not None:
                        first = _text(summary["min"])
                elif unread:
                    last = _text(info.get("last-delivered-id") or "0-0")
                    rows = await self._call(c.xrange(key, min="(" + last, count=1))
                    if rows:
                        first = _text(rows[0][0])
                if first is not None:
                    ms = _id_ms(first)
                    oldest_ms = ms if oldest_ms is None else min(oldest_ms, ms)
            except StoreUnavailable:
                continue
        result.backlog = backlog
        result.lag_s = max(self.clock() - oldest_ms / 1000, 0.0) if oldest_ms else 0.0
        if self.metrics is not None:
            self.metrics.report_backlog.set(backlog)
            self.metrics.report_lag.set(result.lag_s)
