"""The Lua scripts, read once from the package and registered with the store.

redis-py's `Script` runs EVALSHA and loads the script on NOSCRIPT, so a Redis restart
or a new Cluster node costs one extra call, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from gateway.store import Store


def lua_source(name: str) -> str:
    return resources.files("gateway.metering").joinpath("lua", name).read_text("utf-8")


@dataclass(frozen=True, slots=True)
class Scripts:
    debit: Any
    settle: Any

    @classmethod
    def register(cls, store: Store) -> Scripts:
        client = store.client
        return cls(debit=client.register_script(lua_source("debit.lua")),
                   settle=client.register_script(lua_source("settle.lua")))
