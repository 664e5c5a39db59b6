"""Process settings, resolved once from the environment and the command line.

Everything about *traffic* lives in rules.yaml; these are the facts of one deployment.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass


class SettingsError(ValueError):
    """An environment variable with a value the gateway cannot use."""


def _number(env: Mapping[str, str], name: str, default: float,
            positive: bool = False) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, not {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise SettingsError(f"{name} must be a finite number >= 0, not {raw!r}")
    if positive and value == 0:
        raise SettingsError(f"{name} must be more than 0")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    rules_path: str = "rules.yaml"
    host: str = "0.0.0.0"
    port: int = 8080
    admin_host: str = "127.0.0.1"
    admin_port: int = 9090
    redis_url: str | None = None          # None: the embedded store
    admin_token: str | None = None        # None: the admin API refuses everything
    upstream_transport: str = "aiohttp"   # or "httpcore"
    store_deadline_s: float = 0.25
    key_cache_ttl_s: float = 2.0          # a revoked key stops working within this (≤ 5 s)
    drain_timeout_s: float = 30.0
    access_log: bool = True
    max_upstream_connections: int = 1000
    # Requests admitted while the store was down (store_failure: open); "" = memory only.
    journal_path: str = "gateway-journal.jsonl"
    journal_replay_interval_s: float = 1.0
    stripe_api_key: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_api_base: str | None = None          # e.g. a local fake, or an egress proxy
    stripe_meter_events_base: str | None = None
    # Budget alerts (gateway/billing/alerts.py): SMTP server as smtp://host:port
    # (smtps:// for TLS, optional user:password@), sender address, checker period.
    smtp_url: str | None = None
    alert_from: str = "gateway@localhost"
    alert_interval_s: float = 30.0              # <= 0: no checker task
    # Allow customers' alert webhooks on loopback/private addresses (inside the network).
    alert_allow_private: bool = False
    # Stripe usage reporting (gateway/billing/reporter.py): seconds between rounds.
    report_interval_s: float = 60.0             # <= 0: no reporter task
    # Usage younger than this is not reported yet: reserves settle when responses end.
    report_hold_s: float = 600.0
    # Usage records (the reporter's input) older than this are dropped even if never
    # reported: Stripe refuses meter events more than 35 days old. 0 = keep them.
    usage_retention_days: float = 35.0

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        env = os.environ
        values: dict[str, object] = {
            "redis_url": env.get("GATEWAY_REDIS_URL") or None,
            "admin_token": env.get("GATEWAY_ADMIN_TOKEN") or None,
            "upstream_transport": _transport(env.get("GATEWAY_UPSTREAM_TRANSPORT")),
            "store_deadline_s": _number(env, "GATEWAY_STORE_DEADLINE_MS", 250,
                                        positive=True) / 1000,
            "key_cache_ttl_s": min(_number(env, "GATEWAY_KEY_CACHE_TTL_S", 2), 5.0),
            "drain_timeout_s": _number(env, "GATEWAY_DRAIN_TIMEOUT_S", 30),
            "access_log": env.get("GATEWAY_ACCESS_LOG", "1").strip().lower()
            not in ("0", "false", "no", "off"),
            "journal_path": env.get("GATEWAY_JOURNAL_PATH", "gateway-journal.jsonl"),
            "stripe_api_key": env.get("STRIPE_API_KEY") or None,
            "stripe_webhook_secret": env.get("STRIPE_WEBHOOK_SECRET") or None,
            "stripe_api_base": env.get("STRIPE_API_BASE") or None,
            "stripe_meter_events_base": env.get("STRIPE_METER_EVENTS_BASE") or None,
            "smtp_url": env.get("GATEWAY_SMTP_URL") or None,
            "alert_from": env.get("GATEWAY_ALERT_FROM") or "gateway@localhost",
            "alert_interval_s": _number(env, "GATEWAY_ALERT_INTERVAL_S", 30),
            "alert_allow_private": env.get("GATEWAY_ALERT_ALLOW_PRIVATE", "0").lower()
            in ("1", "true", "yes"),
            "report_interval_s": _number(env, "GATEWAY_REPORT_INTERVAL_S", 60),
            "report_hold_s": _number(env, "GATEWAY_REPORT_HOLD_S", 600),
            "usage_retention_days": _number(env, "GATEWAY_USAGE_RETENTION_DAYS", 35),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def _transport(value: str | None) -> str:
    if not value:
        return "aiohttp"
    if value not in ("aiohttp", "httpcore"):
        raise SettingsError(f"GATEWAY_UPSTREAM_TRANSPORT must be aiohttp or httpcore, not "
                            f"{value!r}")
    return value
