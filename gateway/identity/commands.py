"""`gateway keys create|list|revoke`: the admin key operations from a shell.

Each returns the process exit code; `gateway.cli` parses arguments and opens the store.
Results go to `out`, problems to `err` (stderr by default).
"""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime
from typing import TextIO

import orjson

from gateway.errors import GatewayError
from gateway.identity.keys import ApiKey
from gateway.identity.registry import KeyRegistry
from gateway.store import Store


async def keys_create(
    store: Store,
    user: str,
    workspace: str | None = None,
    role: str = "member",
    test: bool = False,
    limit: int | None = None,
    window_s: int | None = None,
    as_json: bool = False,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Create a key and print it (the only time its secret is shown)."""
    try:
        key, secret = await KeyRegistry(store).create(
            user=user, workspace=workspace, role=role, test=test, limit=limit,
            window_s=window_s)
    except GatewayError as exc:
        print(f"gateway keys create: {_as_options(exc.detail)}", file=err)
        return 1
    if as_json:
        out.write(orjson.dumps({"id": key.id, "key": secret, **key.describe()}).decode() + "\n")
    else:
        print(f"Created {'test' if key.test else 'live'} key {key.id} for {_owner(key)} "
              f"(role {key.role}).", file=out)
        print(f"Key (shown once, store it now): {secret}", file=out)
    return 0


async def keys_list(store: Store, as_json: bool = False, out: TextIO = sys.stdout) -> int:
    """Print every key, oldest first, without secrets."""
    keys = await KeyRegistry(store).list()
    if as_json:
        out.write(orjson.dumps({"keys": [k.describe() for k in keys]}).decode() + "\n")
        return 0
    if not keys:
        print("No keys.", file=out)
        return 0
    rows = [("ID", "OWNER", "ROLE", "MODE", "STATUS", "CREATED (UTC)")]
    rows += [(k.id, _owner(k), k.role, "test" if k.test else "live",
              "revoked" if k.revoked else "active", _when(k.created_at)) for k in keys]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(),
              file=out)
    return 0


async def keys_revoke(
    store: Store, id: str, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    """Revoke a key by id; exit code 1 if there is no such key."""
    if not await KeyRegistry(store).revoke(id):
        print(f"gateway keys revoke: no key with id {id}", file=err)
        return 1
    print(f"Revoked {id}; gateways stop accepting it within 5 seconds.", file=out)
    return 0


def _owner(key: ApiKey) -> str:
    return f"{key.user} in {key.workspace}" if key.workspace else key.user


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


# The registry names the admin API's JSON fields; on the command line they are options.
_OPTIONS = {"user": "--user", "workspace": "--workspace", "role": "--role",
            "limit": "--limit", "window_s": "--window"}
_OPTION_RE = re.compile(r"\b(" + "|".join(_OPTIONS) + r")\b(?= (?:must|and|go))")


def _as_options(detail: str) -> str:
    """'limit and window_s go together…' → '--limit and --window go together…'."""
    return _OPTION_RE.sub(lambda m: _OPTIONS[m.group(1)], detail)

