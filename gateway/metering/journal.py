"""What the store must still be told: usage admitted while it was down (`store_failure:
open`) and settlements it could not take, kept until replayed.

Each entry is appended to a JSON-lines file (so a restart replays it too) and to memory;
a background task replays the backlog in order once Redis answers again.
A fail-open request's replay is the normal debit with the journal's request id (so a
replay interrupted by a crash charges nothing twice), without the throughput windows
(that time has passed); usage that no pool can pay any more is booked against the quota
by settlement, never dropped. A settlement (a refund after an upstream failure, a settle
rule's actual amount) found the store down after its request was answered; its replay is
the same settlement, and settle.lua's marker makes a repeat of one that did run move
nothing (within the marker's hour). The file is flushed per entry but not fsynced: a
process crash loses nothing, a power cut may lose the last moments."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from gateway.caller import Caller
from gateway.config import SettingsError
from gateway.errors import StoreUnavailable
from gateway.metering.accounts import SCOPES
from gateway.metering.engine import MeteringEngine, Settled
from gateway.metering.pending import PendingSettlement
from gateway.metering.plans import PlanTables
from gateway.metering.verdict import Decision

if TYPE_CHECKING:
    from gateway.rules import Rules

log = logging.getLogger("gateway.journal")


@dataclass(frozen=True, slots=True)
class JournalEntry:
    rid: str
    user: str
    workspace: str | None
    key_id: str | None
    test: bool
    meter: str
    units: int
    route: str
    ts_ms: int


Entry = JournalEntry | PendingSettlement


def _line(entry: Entry) -> bytes:
    """One file line: a fail-open request's fields, or {"settle": {…}}."""
    fields = dataclasses.asdict(entry)
    return orjson.dumps({"settle": fields} if isinstance(entry, PendingSettlement)
                        else fields) + b"\n"


def _entry(line: bytes) -> Entry:
    doc = orjson.loads(line)
    if not isinstance(doc, dict):
        raise TypeError("not an object")
    if "settle" in doc:
        pending = PendingSettlement(**doc["settle"])
        if pending.scope not in SCOPES:
            raise TypeError(f"scope {pending.scope!r}")
        _check_types(pending)
        return pending
    entry = JournalEntry(**doc)
    _check_types(entry)
    return entry


_TYPES = {"int": (int,), "str": (str,), "bool": (bool,), "str | None": (str, type(None)),
          "int | None": (int, type(None)), "Scope": (str,)}


def _check_types(entry: Entry) -> None:
    """Every field of the type it is declared with: a line that parses but holds, say,
    a string for a number would fail its replay, and the replay goes in order — it would
    hold back every entry after it."""
    for f in dataclasses.fields(entry):
        value = getattr(entry, f.name)
        allowed = _TYPES[str(f.type)]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise TypeError(f"{f.name}: {value!r}")


class Journal:
    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.entries: list[Entry] = []
        if self.path is not None:
            try:  # found out at start-up, not when Redis is down and it is needed
                with self.path.open("ab"):
                    pass
            except OSError as exc:
                raise SettingsError(f"GATEWAY_JOURNAL_PATH {self.path}: cannot write it "
                                    f"({exc.strerror or exc})") from None
        if self.path is not None and self.path.exists():
            for line in self.path.read_bytes().splitlines():
                try:
                    self.entries.append(_entry(line))
                except (orjson.JSONDecodeError, TypeError):
                    log.error("skipping an unreadable journal line in %s: %r", self.path,
                              line[:200])
            if self.entries:
                log.warning("journal %s holds %d entries to replay", self.path,
                            len(self.entries))

    def record(self, entry: Entry) -> None:
        """Keep an entry on disk first, so what is replayed is only what was kept. A
        journal that cannot be written fails a fail-open request closed (503): it is
        neither served nor charged later (settlements: record_settlement)."""
        if self.path is not None:
            try:
                with self.path.open("ab") as f:
                    f.write(_line(entry))
            except OSError as exc:
                log.error("cannot write the journal %s: %s", self.path, exc)
                raise StoreUnavailable("the store is down and the journal cannot be "
                                       "written") from exc
        self.entries.append(entry)

    def record_settlement(self, pending: PendingSettlement) -> None:
        """Keep a settlement the store could not take. Its response has been sent, so
        a journal that cannot be written still keeps it in memory (lost only if the
        process ends before Redis is back; the failure is logged)."""
        try:
            self.record(pending)
        except StoreUnavailable:
            self.entries.append(pending)

    def __len__(self) -> int:
        return len(self.entries)

    async def replay(self, engine: MeteringEngine, rules: Rules, tables: PlanTables,
                     on_replayed: Callable[[int], None] = lambda n: None,
                     on_settled: Callable[[PendingSettlement, Settled], None] | None = None
                     ) -> int:
        """Replay the backlog in order; stops quietly at the first store failure."""
        done = 0
        try:
            for entry in list(self.entries):
                if entry.meter not in rules.meters:
                    log.error("journal entry %s names meter %r, gone from the rules; "
                              "dropped", _name(entry), entry.meter)
                elif isinstance(entry, PendingSettlement):
                    settled = await engine.settle_pending(rules, tables, entry)
                    if on_settled is not None:
                        on_settled(entry, settled)
                else:
                    await _charge(engine, rules, tables, entry)
                done += 1
        except StoreUnavailable:
            pass
        finally:
            if done:
                del self.entries[:done]
                self._rewrite()
                on_replayed(done)
        return done

    def _rewrite(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_bytes(b"".join(_line(e) for e in self.entries))
        os.replace(tmp, self.path)


def _name(entry: Entry) -> str:
    return entry.request_id if isinstance(entry, PendingSettlement) else entry.rid


async def _charge(engine: MeteringEngine, rules: Rules, tables: PlanTables,
                  entry: JournalEntry) -> None:
    caller = Caller(user=entry.user, workspace=entry.workspace, key_id=entry.key_id,
                    test=entry.test)
    rid = "journal-" + entry.rid
    decision = await engine.admit(
        rules, tables, caller, meter=entry.meter, units=entry.units, route=entry.route,
        request_id=rid, idempotent=True, enforce=True, replay=True,
        fingerprint=f"journal {entry.route} {entry.meter} {entry.units}")
    if decision.admitted or not decision.legs:
        return
    # Nobody can pay any more, but the request was served: settle a zero debit up to
    # the units on the last account asked (the user), which books what no pool covers
    # against the quota.
    leg = decision.legs[-1]
    zero = dataclasses.replace(leg, quota_units=0, credit_units=0, credit_micro=0,
                               overage_units=0, overage_micro=0, grace_units=0)
    await engine.settle(rules, tables, Decision(admitted=True, units=0, leg=zero,
                                                charged=True), caller,
                        actual=entry.units, kind="replay", route=entry.route,
                        request_id=rid, meter=entry.meter)
