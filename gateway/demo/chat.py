"""The OpenAI-like half of the demo upstream: `/v1/models` and `/v1/chat/completions`.

Token counts are deterministic so tests can check the gateway's settlement exactly:

    prompt_tokens     = words (whitespace-separated) in all messages' text content
    completion_tokens = min(max_tokens or 32, 32)
    total_tokens      = prompt_tokens + completion_tokens

With `"stream": true` the answer is `text/event-stream`: one `chat.completion.chunk` per
completion token (the first also carries the role), a chunk with the `finish_reason`,
a final chunk with empty `choices` and the `usage` — what OpenAI sends when asked with
`stream_options.include_usage`; the demo always sends it because the gateway settles
from it — and then `data: [DONE]`.

`delay_ms` (JSON field or query parameter) sleeps before each token chunk, so tests can
make slow streams (client disconnects, timeouts mid-stream); a non-streamed answer
takes as long as its stream would.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.demo.responses import error_response, json_response, read_json_object

MODELS = ("demo-7b", "demo-70b")
MAX_COMPLETION_TOKENS = 32
MAX_DELAY_MS = 60_000  # a knob for tests, not a way to park a connection forever
# The completion's words, cycled; any fixed text would do.
WORDS = ("metered", "tokens", "flow", "through", "the", "gateway", "and", "every", "one",
         "is", "counted", "once")


@dataclass(frozen=True)
class Completion:
    """One chat completion request, validated, and the answer it will get."""

    id: str
    model: str
    created: int
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    delay_s: float

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}

    def tokens(self) -> list[str]:
        """The completion split into tokens; joined they are the message content."""
        words = [WORDS[i % len(WORDS)] for i in range(self.completion_tokens)]
        return [w if i == 0 else " " + w for i, w in enumerate(words)]


def count_words(messages: list[Any]) -> int:
    """Prompt tokens: words in each message's text (a string, or OpenAI content parts)."""
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(part["text"].split())
    return total


def _parse(data: dict[str, Any], query_delay: str | None, completion_id: str
           ) -> Completion | Response:
    model = data.get("model")
    if not isinstance(model, str):
        return error_response(400, "invalid_request", "'model' is required")
    if model not in MODELS:
        return error_response(404, "model_not_found", f"the model {model!r} does not exist")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        return error_response(400, "invalid_request", "'messages' must be a non-empty list")
    max_tokens = data.get("max_tokens")
    if max_tokens is not None and (
            not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        return error_response(400, "invalid_request", "'max_tokens' must be a positive integer")
    if not isinstance(data.get("stream", False), bool):
        return error_response(400, "invalid_request", "'stream' must be a boolean")
    delay = data.get("delay_ms", query_delay or 0)
    try:
        delay_ms = float(delay)
    except (TypeError, ValueError):
        return error_response(400, "invalid_request", "'delay_ms' must be a number")
    if not 0 <= delay_ms <= MAX_DELAY_MS:
        return error_response(400, "invalid_request", f"'delay_ms' must be 0..{MAX_DELAY_MS}")
    limit = max_tokens or MAX_COMPLETION_TOKENS
    return Completion(
        id=completion_id, model=model, created=int(time.time()),
        prompt_tokens=count_words(messages),
        completion_tokens=min(limit, MAX_COMPLETION_TOKENS),
        # "length" when max_tokens cut the answer short, as OpenAI reports it.
        finish_reason="length" if limit < MAX_COMPLETION_TOKENS else "stop",
        delay_s=delay_ms / 1000)


def _completion_body(c: Completion) -> dict[str, Any]:
    return {
        "id": c.id, "object": "chat.completion", "created": c.created, "model": c.model,
        "choices": [{"index": 0, "finish_reason": c.finish_reason,
                     "message": {"role": "assistant", "content": "".join(c.tokens())}}],
        "usage": c.usage(),
    }


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


async def stream_events(c: Completion) -> AsyncIterator[bytes]:
    """The SSE body of a streamed completion, token by token."""

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None
              ) -> dict[str, Any]:
        return {"id": c.id, "object": "chat.completion.chunk", "created": c.created,
                "model": c.model, "choices": choices, "usage": usage}

    for i, token in enumerate(c.tokens()):
        if c.delay_s:
            await asyncio.sleep(c.delay_s)
        delta = {"role": "assistant", "content": token} if i == 0 else {"content": token}
        yield _event(chunk([{"index": 0, "delta": delta, "finish_reason": None}]))
    yield _event(chunk([{"index": 0, "delta": {}, "finish_reason": c.finish_reason}]))
    yield _event(chunk([], c.usage()))
    yield b"data: [DONE]\n\n"


def chat_routes() -> list[Route]:
    """The OpenAI-like routes; completion ids are numbered per app."""
    ids = itertools.count(1)

    async def models(request: Request) -> Response:
        return json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "demo"} for m in MODELS]})

    async def chat_completions(request: Request) -> Response:
        data = await read_json_object(request)
        if isinstance(data, Response):
            return data
        parsed = _parse(data, request.query_params.get("delay_ms"),
                        f"chatcmpl-demo-{next(ids):06d}")
        if isinstance(parsed, Response):
            return parsed
        if data.get("stream", False):
            return StreamingResponse(stream_events(parsed), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        if parsed.delay_s:
            await asyncio.sleep(parsed.delay_s * parsed.completion_tokens)
        return json_response(_completion_body(parsed))

    return [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]
