"""Reading the actual cost from response bytes as they stream past (UsageObserver)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.metering.settlement import MAX_REPORTED, UsageObserver

JSON = [(b"content-type", b"application/json")]
SSE = [(b"content-type", b"text/event-stream; charset=utf-8")]


def observe(headers: list[tuple[bytes, bytes]], chunks: list[bytes],
            header: bytes | None = None) -> UsageObserver:
    o = UsageObserver(("usage", "total_tokens"), header, ("model",))
    o.on_start(200, headers)
    for chunk in chunks:
        o.on_chunk(chunk)
    o.finish()
    return o


def test_json_body_in_pieces() -> None:
    body = orjson.dumps({"model": "m-1", "usage": {"total_tokens": 42}})
    o = observe(JSON, [body[:5], body[5:17], body[17:]])
    assert (o.actual, o.model) == (42, "m-1")


def test_the_final_sse_usage_chunk_wins_across_chunk_boundaries() -> None:
    stream = (b'data: {"model": "m-2", "choices": []}\n\n'
              b'data: {"usage": {"total_tokens": 7}}\n\n'
              b'data: {"usage": {"total_tokens": 19}}\n\ndata: [DONE]\n\n')
    o = observe(SSE, [stream[i:i + 3] for i in range(0, len(stream), 3)])
    assert (o.actual, o.model) == (19, "m-2")


@pytest.mark.parametrize("reported", [
    MAX_REPORTED + 1, 9_007_199_254_740_993, 1e20, -1, "12abc", True, "\uff11\uff12"])
def test_implausible_amounts_are_not_believed(reported: object) -> None:
    body = orjson.dumps({"usage": {"total_tokens": reported}})
    assert observe(JSON, [body]).actual is None
    assert observe([], [], header=b"x-units").actual is None
    headers = [(b"x-units", str(reported).encode())]
    assert observe(headers, [], header=b"x-units").actual is None


def test_a_header_amount() -> None:
    assert observe([(b"X-Units", b" 250 ")], [], header=b"x-units").actual == 250


@given(st.lists(st.binary(max_size=200), max_size=20))
def test_any_bytes_are_read_without_error(chunks: list[bytes]) -> None:
    for headers in (JSON, SSE):
        o = observe(headers, chunks)
        assert o.actual is None or 0 <= o.actual <= MAX_REPORTED
