"""The demo upstream: exact values for ops, token usage and SSE framing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from gateway.demo.chat import MAX_COMPLETION_TOKENS
from gateway.demo.upstream import OPS, build_demo_upstream


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_demo_upstream())
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as c:
        yield c


def parse_sse(body: bytes) -> list[str]:
    """Every event's data, checking the framing: `data: …` lines, events end with a blank line."""
    assert body.endswith(b"\n\n")
    events = body[:-2].split(b"\n\n")
    out = []
    for event in events:
        assert event.startswith(b"data: "), event
        assert b"\n" not in event, event  # one data line per event
        out.append(event[len(b"data: "):].decode())
    return out


CHAT = {"model": "demo-7b",
        "messages": [{"role": "system", "content": "You are terse."},
                     {"role": "user", "content": "count  the words\nin here please"}]}
PROMPT_WORDS = 3 + 6


# --- compute-like ----------------------------------------------------------------------

@pytest.mark.parametrize(("op", "body", "result"), [
    ("add", {"a": [1, 2], "b": [10, 20]}, [11.0, 22.0]),
    ("add-plain", {}, [2.0, 3.0, 4.0, 5.0]),
    ("negate", {"a": [1, -2]}, [-1.0, 2.0]),
    ("rescale", {"a": [4, 8], "scale": 4}, [1.0, 2.0]),
    ("multiply", {"a": [2, 3], "b": [4, 5]}, [8.0, 15.0]),
    ("multiply-plain", {"a": [2], "b": [0.5]}, [1.0]),
    ("rotate", {"a": [1, 2, 3], "steps": 1}, [2.0, 3.0, 1.0]),
    ("key_switch", {"a": [7]}, [7.0]),
    ("poly-eval", {"a": [2], "coeffs": [1, 0, 3]}, [13.0]),  # 1 + 0·2 + 3·2²
    ("matmul", {"a": [1, 2], "b": [3, 4]}, [11.0]),
    ("bootstrap", {"a": [1.5]}, [1.5]),
    ("infer_7b", {}, "demo-7b: 4 inputs processed"),
    ("infer_70b", {"a": [1]}, "demo-70b: 1 inputs processed"),
])
async def test_ops_compute_their_result(client: httpx.AsyncClient, op: str, body: dict[str, Any],
                                        result: object) -> None:
    r = await client.post(f"/api/v1/ops/{op}", json=body)
    assert r.status_code == 200
    data = r.json()
    assert data["op"] == op
    assert data["result"] == result
    assert data["job_id"].startswith("job_")


def test_every_op_is_tested() -> None:
    assert len(OPS) == 13


async def test_job_can_be_read_back(client: httpx.AsyncClient) -> None:
    first = (await client.post("/api/v1/ops/negate", json={"a": [3]})).json()
    second = (await client.post("/api/v1/ops/add")).json()  # no body: default operands
    assert first["job_id"] != second["job_id"]
    r = await client.get(f"/api/v1/jobs/{first['job_id']}")
    assert r.status_code == 200
    assert r.json() == {"job_id": first["job_id"], "op": "negate", "status": "done",
                        "result": [-3.0]}
    status = (await client.get("/api/v1/status")).json()
    assert status["status"] == "ok"
    assert status["jobs"] == 2
    assert set(status["ops"]) == set(OPS)


async def test_unknown_op_and_job_are_404_json(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/ops/factorise")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == "unknown_op"
    r = await client.get("/api/v1/jobs/job_99999999")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "unknown_job"


@pytest.mark.parametrize(("body", "code"), [
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (b'{"a": ["x"]}', "invalid_operands"),
    (b'{"a": [1], "steps": "two"}', "invalid_operands"),
])
async def test_bad_op_bodies_are_400(client: httpx.AsyncClient, body: bytes, code: str) -> None:
    r = await client.post("/api/v1/ops/rotate", content=body)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == code


async def test_healthz(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


# --- OpenAI-like -----------------------------------------------------------------------

async def test_models(client: httpx.AsyncClient) -> None:
    data = (await client.get("/v1/models")).json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == ["demo-7b", "demo-70b"]


async def test_chat_completion_usage_arithmetic(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "chat.completion"
    assert data["model"] == "demo-7b"
    assert data["usage"] == {"prompt_tokens": PROMPT_WORDS,
                             "completion_tokens": MAX_COMPLETION_TOKENS,
                             "total_tokens": PROMPT_WORDS + MAX_COMPLETION_TOKENS}
    choice = data["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert len(choice["message"]["content"].split()) == MAX_COMPLETION_TOKENS


@pytest.mark.parametrize(("max_tokens", "completion", "finish"),
                         [(5, 5, "length"), (32, 32, "stop"), (1000, 32, "stop")])
async def test_max_tokens_caps_completion(client: httpx.AsyncClient, max_tokens: int,
                                          completion: int, finish: str) -> None:
    data = (await client.post("/v1/chat/completions",
                              json={**CHAT, "max_tokens": max_tokens})).json()
    assert data["usage"]["completion_tokens"] == completion
    assert data["usage"]["total_tokens"] == PROMPT_WORDS + completion
    assert data["choices"][0]["finish_reason"] == finish


async def test_content_parts_count_their_text(client: httpx.AsyncClient) -> None:
    body = {"model": "demo-70b", "max_tokens": 1, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "two words"},
                                     {"type": "image_url", "image_url": {"url": "x"}},
                                     {"type": "text", "text": "and three more"}]}]}
    data = (await client.post("/v1/chat/completions", json=body)).json()
    assert data["usage"] == {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}


async def test_streamed_completion_framing_and_usage(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json={**CHAT, "stream": True, "max_tokens": 7})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    data = parse_sse(r.content)
    assert data[-1] == "[DONE]"
    chunks = [orjson.loads(d) for d in data[:-1]]  # every event but the last is JSON
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    tokens = [c for c in chunks if c["choices"] and "content" in c["choices"][0]["delta"]]
    assert len(tokens) == 7
    assert tokens[0]["choices"][0]["delta"]["role"] == "assistant"
    finish = chunks[-2]["choices"][0]
    assert finish == {"index": 0, "delta": {}, "finish_reason": "length"}
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert usage == {"prompt_tokens": PROMPT_WORDS, "completion_tokens": 7,
                     "total_tokens": PROMPT_WORDS + 7}
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert all(c["usage"] is None for c in chunks[:-1])
    # The streamed text is the same completion the JSON answer carries.
    whole = (await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 7})).json()
    streamed = "".join(c["choices"][0]["delta"]["content"] for c in tokens)
    assert streamed == whole["choices"][0]["message"]["content"]


async def test_delay_ms_query_slows_the_stream(client: httpx.AsyncClient) -> None:
    started = time.monotonic()
    r = await client.post("/v1/chat/completions?delay_ms=30",
                          json={**CHAT, "stream": True, "max_tokens": 4})
    # 4 token chunks, each after a 30 ms pause (timer slack only ever adds).
    assert time.monotonic() - started >= 4 * 0.030
    assert parse_sse(r.content)[-1] == "[DONE]"


async def test_delay_ms_in_body(client: httpx.AsyncClient) -> None:
    started = time.monotonic()
    r = await client.post("/v1/chat/completions",
                          json={**CHAT, "max_tokens": 3, "delay_ms": 20})
    assert r.status_code == 200
    assert time.monotonic() - started >= 3 * 0.020


@pytest.mark.parametrize(("body", "status", "code"), [
    (b'{"model": "demo-7b", "messages": [', 400, "invalid_json"),
    (b'"just a string"', 400, "invalid_json"),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "invalid_request"),
    (b'{"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}', 404,
     "model_not_found"),
    (b'{"model": "demo-7b", "messages": []}', 400, "invalid_request"),
    (b'{"model": "demo-7b", "messages": [{"content": "x"}], "max_tokens": 0}', 400,
     "invalid_request"),
    (b'{"model": "demo-7b", "messages": [{"content": "x"}], "stream": "yes"}', 400,
     "invalid_request"),
    (b'{"model": "demo-7b", "messages": [{"content": "x"}], "delay_ms": -1}', 400,
     "invalid_request"),
])
async def test_bad_chat_requests(client: httpx.AsyncClient, body: bytes, status: int,
                                 code: str) -> None:
    r = await client.post("/v1/chat/completions", content=body)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == code
