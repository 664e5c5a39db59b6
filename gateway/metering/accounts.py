"""Accounts and their Redis key names (pure).

An account is a workspace or a user. All of one account's keys share the hash tag
`{ws:ID}` or `{u:ID}`, so its Lua script touches one Cluster slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Scope = Literal["workspace", "user"]
SCOPES: tuple[Scope, ...] = ("workspace", "user")
_TAG = {"workspace": "ws", "user": "u"}


@dataclass(frozen=True, slots=True)
class Account:
    scope: Scope
    id: str

    @property
    def tag(self) -> str:
        return "{" + _TAG[self.scope] + ":" + self.id + "}"

    def key(self, part: str) -> str:
        return f"gw:{self.tag}:{part}"

    # The keys, named once.
    @property
    def config_key(self) -> str:
        """Hash: plan, status, past_due_until, period_start/end, cap_micro, hard_cap."""
        return self.key("acct")

    @property
    def windows_key(self) -> str:
        return self.key("win")

    @property
    def credits_key(self) -> str:
        return self.key("credits")

    @property
    def usage_stream(self) -> str:
        return self.key("usage")

    @property
    def period_prefix(self) -> str:
        return self.key("p:")

    def period_key(self, period: str) -> str:
        return self.period_prefix + period

    @property
    def day_prefix(self) -> str:
        """Daily rollups `…:d:<YYYY-MM-DD>`: requests and units per meter and model."""
        return self.key("d:")

    def day_key(self, day: str) -> str:
        return self.day_prefix + day

    def request_key(self, rid: str) -> str:
        return self.key("rid:" + rid)

    def settled_key(self, rid: str) -> str:
        return self.key("settled:" + rid)

    def topup_key(self, session_id: str) -> str:
        """Marks a Stripe top-up session granted (beside the balance: one slot)."""
        return self.key("topup:" + session_id)

    def clawback_key(self, charge_id: str) -> str:
        """Micro-USD already clawed back for a refunded Stripe charge."""
        return self.key("clawback:" + charge_id)


def parse_scope(value: str) -> Scope:
    if value in ("workspace", "ws"):
        return "workspace"
    if value in ("user", "u"):
        return "user"
    raise ValueError(f"scope must be workspace or user, not {value!r}")
