"""The Lua scripts, read once from the package and registered with the store.

Each script is `lib.lua` + its own body, so shared logic (clock, billing period, window
reading) has one implementation yet every call is one self-contained EVALSHA.
redis-py's `Script` loads a script on NOSCRIPT, so a Redis restart or a new Cluster
node costs one extra call, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from gateway.store import Store


def lua_source(name: str) -> str:
    """A script's full source: the shared library followed by the script itself."""
    folder = resources.files("gateway.metering").joinpath("lua")
    return folder.joinpath("lib.lua").read_text("utf-8") + "\n" + folder.joinpath(
        name).read_text("utf-8")


@dataclass(frozen=True, slots=True)
class Scripts:
    debit: Any
    settle: Any
    usage: Any
    credits: Any

    @classmethod
    def register(cls, store: Store) -> Scripts:
        client = store.client
        return cls(debit=client.register_script(lua_source("debit.lua")),
                   settle=client.register_script(lua_source("settle.lua")),
                   usage=client.register_script(lua_source("usage.lua")),
                   credits=client.register_script(lua_source("credits.lua")))
