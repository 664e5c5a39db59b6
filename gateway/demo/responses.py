"""JSON in and out for the demo upstream, shared by its compute and chat endpoints."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

MAX_BODY = 64 * 1024  # demo requests are a few fields; refuse to buffer anything large


def json_response(data: object, status: int = 200) -> Response:
    """A JSON response, encoded with orjson."""
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def error_response(status: int, code: str, message: str) -> Response:
    """The OpenAI-style error body, used by both endpoint families."""
    return json_response({"error": {"message": message, "type": "invalid_request_error",
                                    "code": code}}, status)


async def read_json_object(request: Request) -> dict[str, Any] | Response:
    """The request body as a JSON object; an empty body is `{}`; anything else is a 400."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return error_response(413, "body_too_large", f"body exceeds {MAX_BODY} bytes")
    if not body.strip():
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return error_response(400, "invalid_json", f"body is not valid JSON: {exc}")
    if not isinstance(data, dict):
        return error_response(400, "invalid_json", "body must be a JSON object")
    return data
