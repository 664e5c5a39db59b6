"""One JSON line per request on stdout (logger `gateway.access`)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

log = logging.getLogger("gateway.access")


def configure(enabled: bool) -> None:
    log.propagate = False
    log.handlers.clear()
    if enabled:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    else:
        log.setLevel(logging.CRITICAL + 1)


def record(entry: dict[str, Any]) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info(orjson.dumps(entry).decode())
