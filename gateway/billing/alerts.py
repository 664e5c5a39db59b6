"""Budget alerts: 80 % and 100 % of the monthly cap, each once per threshold per period.

A checker task inside `gateway serve` wakes every `alert_interval_s`, walks the set
`gw:budget:accounts` ("scope:id", written by POST /billing/budget), reads each account's
cap and this period's spend, and delivers what is due by webhook POST (JSON
{scope, id, threshold, spend_usd, cap_usd, period, period_start, period_end}) and by email
through the configured SMTP server (`GATEWAY_SMTP_URL`).

Exactly once, across restarts and replicas — markers in Redis, under the account's hash tag:

- `gw:{tag}:alert:<period>:<cap>:<threshold>` is the threshold's marker (a cap raised or
  lowered in the period re-arms both thresholds against the new cap). A checker first claims
  it with `SET … NX PX <lease>` (value: a random token). Only the claimer delivers, so two
  replicas never send the same alert concurrently. After every channel has delivered, the
  marker is overwritten with "sent" and a long TTL; if any channel failed, the claimer
  deletes its claim (only if still its own) so the next round retries.
- `gw:{tag}:alert:<period>:<threshold>:<channel>` marks one delivered channel, so a retry
  after a partial failure (email sent, webhook down) resends only the failed channel.

Choice about double sends: claim-then-send means a crash *after* delivering but *before*
recording it resends once the lease expires (at-least-once in that narrow window); the
alternative (mark-then-send) would lose the alert on such a crash. Webhooks carry
`X-Gateway-Alert-Id: <scope>:<id>:<period>:<threshold>` so a receiver can drop that rare
duplicate. The period id is part of every key, so a new period re-arms both thresholds.

Webhook targets are customers' URLs, fetched from inside the operator's network: unless
`GATEWAY_ALERT_ALLOW_PRIVATE` is set, a target whose host is (or resolves to) a loopback,
private, link-local or otherwise non-public address is refused, when it is set and again
before every delivery.

The same channels carry other notices to an account (`notify`: Stripe's
trial_will_end), best effort and without markers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import httpx
import orjson

from gateway.metering.accounts import Account
from gateway.money import micro_to_usd

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = logging.getLogger("gateway.alerts")

BUDGET_ACCOUNTS = "gw:budget:accounts"
THRESHOLDS = (80, 100)
LEASE_MS = 120_000                  # a claimer has this long to deliver and record it
SENT_TTL_MS = 400 * 86_400_000      # longer than any billing period (annual included)
DELIVERY_TIMEOUT_S = 10.0


def budget_member(account: Account) -> str:
    return f"{account.scope}:{account.id}"


def account_of(member: str) -> Account | None:
    scope, _, account_id = member.partition(":")
    if scope == "user" and account_id:
        return Account("user", account_id)
    if scope == "workspace" and account_id:
        return Account("workspace", account_id)
    return None


def marker_key(account: Account, period: str, cap_micro: int, threshold: int) -> str:
    return account.key(f"alert:{period}:{cap_micro}:{threshold}")


def public_address(text: str) -> bool:
    """Whether an IP address may be the target of a customer's webhook."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def host_allowed(host: str) -> bool:
    """A webhook host as written: no localhost, no non-public IP literal (names are
    checked again when they resolve)."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return True  # a name
    return public_address(host)


async def resolves_publicly(host: str, port: int) -> bool:
    """Every address the host resolves to is public (no DNS trick into the network)."""
    if not host_allowed(host):
        return False
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port)
    except OSError:
        return False
    return bool(infos) and all(public_address(str(info[4][0])) for info in infos)


@dataclass(frozen=True, slots=True)
class Notice:
    """Something to tell an account by its alert channels."""

    kind: str
    notice_id: str
    subject: str
    text: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Alert:
    account: Account
    threshold: int
    spend_micro: int
    cap_micro: int
    period: dict[str, str]  # {id, start, end}

    @property
    def alert_id(self) -> str:
        """One per account, period, cap and threshold: a new cap's alert is a new one."""
        return (f"{self.account.scope}:{self.account.id}:{self.period['id']}:"
                f"{self.cap_micro}:{self.threshold}")

    def notice(self) -> Notice:
        p = self.payload()
        # People read dates; the period id ("2026-11", "s1794268800000") is for machines.
        span = f"{p['period_start'][:10]} to {p['period_end'][:10]}"
        return Notice(
            "budget", self.alert_id,
            f"Budget alert: {self.threshold}% of your budget cap ({p['scope']} {p['id']}, "
            f"{span})",
            f"Spend this billing period ({span}) is ${p['spend_usd']}, {self.threshold}% or "
            f"more of the ${p['cap_usd']} cap for {p['scope']} {p['id']}.\n", p)

    def payload(self) -> dict[str, Any]:
        return {
            "scope": self.account.scope,
            "id": self.account.id,
            "threshold": self.threshold,
            "spend_usd": micro_to_usd(self.spend_micro),
            "cap_usd": micro_to_usd(self.cap_micro),
            "period": self.period["id"],
            "period_start": self.period["start"],
            "period_end": self.period["end"],
        }


@dataclass(frozen=True, slots=True)
class SmtpTarget:
    host: str
    port: int
    tls: bool
    user: str | None
    password: str | None


def parse_smtp_url(url: str) -> SmtpTarget:
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ValueError(f"GATEWAY_SMTP_URL must look like smtp://host:port, not {url!r}")
    tls = parts.scheme == "smtps"
    return SmtpTarget(parts.hostname, parts.port or (465 if tls else 25), tls,
                      unquote(parts.username) if parts.username else None,
                      unquote(parts.password) if parts.password else None)


def send_email(target: SmtpTarget, message: EmailMessage, timeout_s: float) -> None:
    """Blocking: run it in a thread."""
    smtp: smtplib.SMTP
    if target.tls:
        smtp = smtplib.SMTP_SSL(target.host, target.port, timeout=timeout_s,
                                context=ssl.create_default_context())
    else:
        smtp = smtplib.SMTP(target.host, target.port, timeout=timeout_s)
    with smtp:
        if target.user is not None:
            smtp.login(target.user, target.password or "")
        smtp.send_message(message)


def email_for(notice: Notice, sender: str, recipient: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = recipient
    msg["Subject"] = notice.subject
    msg.set_content(notice.text)
    return msg


class AlertChecker:
    """Scans budgeted accounts and delivers due alerts; see the module docstring."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._http: httpx.AsyncClient | None = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=DELIVERY_TIMEOUT_S, follow_redirects=False)
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def run_forever(self) -> None:
        interval = self.runtime.settings.alert_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.run_once()
            except Exception:  # the loop must outlive a bad round (Redis down, …)
                log.exception("budget alert round failed")

    async def run_once(self) -> list[Alert]:
        """One round over every budgeted account; returns the alerts fully delivered."""
        store = self.runtime.store
        members: set[str] = set()
        cursor: Any = 0
        while True:
            cursor, batch = await store.read(partial(store.client.sscan, BUDGET_ACCOUNTS,
                                                     cursor, count=500))
            members.update(m.decode() if isinstance(m, bytes) else str(m) for m in batch)
            if int(cursor) == 0:
                break
        sent: list[Alert] = []
        for member in sorted(members):
            account = account_of(member)
            if account is None:
                continue
            try:
                sent.extend(await self.check(account))
            except Exception:  # one account must not stop the others
                log.exception("budget alerts for %s failed", member)
        return sent

    async def check(self, account: Account) -> list[Alert]:
        runtime = self.runtime
        config = await runtime.ledger.config(account)
        if not config.get("cap_micro"):
            return []
        cap = int(config["cap_micro"])
        channels = self.channels(config)
        if cap <= 0 or not channels:
            return []  # nowhere to send: nothing is marked, a later target gets it
        now = runtime.clock_ms() if runtime.clock_ms else None
        view = await runtime.ledger.view(runtime.rules, runtime.routing.tables, account, now)
        spend = int(view["spend_micro_usd"])
        sent = []
        for threshold in THRESHOLDS:
            if spend * 100 < cap * threshold:
                break
            alert = Alert(account, threshold, spend, cap, view["period"])
            if await self._deliver_once(alert, channels):
                sent.append(alert)
        return sent

    def channels(self, config: dict[str, str]) -> dict[str, str]:
        """An account's alert targets by channel (email only with an SMTP server)."""
        channels: dict[str, str] = {}
        if config.get("alert_webhook"):
            channels["webhook"] = config["alert_webhook"]
        if config.get("alert_email") and self.runtime.settings.smtp_url:
            channels["email"] = config["alert_email"]
        return channels

    async def notify(self, notice: Notice, channels: dict[str, str]) -> list[str]:
        """Send a notice by every channel once, best effort; the channels that took it."""
        return [channel for channel, target in channels.items()
                if await self._send(notice, channel, target)]

    async def _deliver_once(self, alert: Alert, channels: dict[str, str]) -> bool:
        store = self.runtime.store
        client = store.client
        key = marker_key(alert.account, alert.period["id"], alert.cap_micro, alert.threshold)
        token = "claim:" + secrets.token_hex(8)
        claimed = await store.call(client.set(key, token, nx=True, px=LEASE_MS))
        if not claimed:
            return False  # sent already, or another checker is sending it now
        all_ok = True
        for channel, target in channels.items():
            done_key = f"{key}:{channel}"
            if await store.read(partial(client.exists, done_key)):
                continue
            ok = await self._send(alert.notice(), channel, target)
            label = (str(alert.threshold), channel)
            if ok:
                self.runtime.metrics.budget_alerts_sent.labels(*label).inc()
                await store.call(client.set(done_key, "1", px=SENT_TTL_MS))
            else:
                self.runtime.metrics.budget_alert_failures.labels(*label).inc()
                all_ok = False
        if all_ok:
            await store.call(client.set(key, "sent", px=SENT_TTL_MS))
            return True
        # Give the claim back so the next round retries the failed channel(s).
        current = await store.read(lambda: client.get(key))
        if current is not None and (current.decode() if isinstance(current, bytes)
                                    else current) == token:
            await store.call(client.delete(key))
        return False

    async def _send(self, notice: Notice, channel: str, target: str) -> bool:
        settings = self.runtime.settings
        try:
            if channel == "webhook":
                parts = urlsplit(target)
                port = parts.port or (443 if parts.scheme == "https" else 80)
                if not settings.alert_allow_private and not await resolves_publicly(
                        parts.hostname or "", port):
                    log.warning("%s notice %s not sent: webhook host %s is not a public "
                                "address", notice.kind, notice.notice_id, parts.hostname)
                    return False
                r = await self._client().post(
                    target, content=orjson.dumps(notice.payload),
                    headers={"content-type": "application/json",
                             "user-agent": "metering-gateway-alerts",
                             "x-gateway-alert-id": notice.notice_id})
                if 200 <= r.status_code < 300:
                    return True
                log.warning("%s notice %s: webhook answered %d", notice.kind,
                            notice.notice_id, r.status_code)
                return False
            assert settings.smtp_url is not None
            smtp = parse_smtp_url(settings.smtp_url)
            message = email_for(notice, settings.alert_from, target)
            await asyncio.to_thread(send_email, smtp, message, DELIVERY_TIMEOUT_S)
            return True
        except Exception as exc:  # network, SMTP, bad URL: all retried next round
            log.warning("%s notice %s by %s failed: %s", notice.kind, notice.notice_id,
                        channel, exc)
            return False
