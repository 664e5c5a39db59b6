"""uvicorn's HTTP/1.1 protocol, answering unparseable requests in problem+json.

A request httptools cannot parse (a bad request line, a malformed header, a broken chunk)
never reaches the ASGI app: uvicorn answers it itself, in text/plain. Clients of the
gateway get every error as problem+json, this one too.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.errors import GatewayError, problem_bytes

_BODY = problem_bytes(GatewayError("BAD_REQUEST", "the request is not valid HTTP/1.1"))
_RESPONSE = b"".join([
    b"HTTP/1.1 400 Bad Request\r\n",
    b"content-type: application/problem+json\r\n",
    b"content-length: ", str(len(_BODY)).encode(), b"\r\n",
    b"connection: close\r\n",
    b"\r\n",
    _BODY,
])


class GatewayHttpProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        # (uvicorn has logged `msg` already.) The connection cannot be trusted further.
        self.transport.write(_RESPONSE)
        self.transport.close()
