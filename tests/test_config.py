"""Settings from the environment: a bad value is a sentence naming the variable."""

from __future__ import annotations

import pytest

from gateway.cli import main
from gateway.config import Settings, SettingsError


def test_defaults_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_STORE_DEADLINE_MS", raising=False)
    monkeypatch.setenv("GATEWAY_KEY_CACHE_TTL_S", "60")
    monkeypatch.setenv("GATEWAY_USAGE_RETENTION_DAYS", "7")
    s = Settings.from_env(port=1234)
    assert (s.store_deadline_s, s.key_cache_ttl_s, s.usage_retention_days, s.port) == (
        0.25, 5.0, 7.0, 1234)   # the key cache never holds a revoked key over 5 s


@pytest.mark.parametrize(("name", "value"), [
    ("GATEWAY_STORE_DEADLINE_MS", "fast"), ("GATEWAY_DRAIN_TIMEOUT_S", "-1"),
    ("GATEWAY_REPORT_INTERVAL_S", "nan"), ("GATEWAY_USAGE_RETENTION_DAYS", "inf"),
    ("GATEWAY_UPSTREAM_TRANSPORT", "curl")])
def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, name: str,
                                      value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        Settings.from_env()


def test_the_command_line_prints_a_sentence_not_a_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GATEWAY_ALERT_INTERVAL_S", "soon")
    assert main(["serve", "--rules", "rules.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "gateway: GATEWAY_ALERT_INTERVAL_S must be a number, not 'soon'"


@pytest.mark.parametrize(("url", "says"), [
    ("http://x", "unsupported scheme 'http'"), ("redis://:abc", "no host"),
    ("redis://127.0.0.1:6379/x", "the database must be a number"),
    ("redis+sentinel://127.0.0.1:26379", "needs a service name"),
    ("unix://", "no socket path"), ("unix:///run/redis.sock?db=two", "must be a number")])
def test_a_store_url_it_cannot_use_is_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str,
        says: str) -> None:
    monkeypatch.setenv("GATEWAY_REDIS_URL", url)
    assert main(["serve", "--rules", "rules.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gateway: GATEWAY_REDIS_URL") and says in err[0]


def test_a_zero_deadline_and_spelled_out_booleans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_STORE_DEADLINE_MS", "0")
    with pytest.raises(SettingsError, match="more than 0"):
        Settings.from_env()
    monkeypatch.delenv("GATEWAY_STORE_DEADLINE_MS")
    for off in ("FALSE", "off", " no "):
        monkeypatch.setenv("GATEWAY_ACCESS_LOG", off)
        assert Settings.from_env().access_log is False
