"""Who is calling: the result of identification, used by metering and forwarding."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Caller:
    user: str
    workspace: str | None
    key_id: str | None          # None when identified by trusted identity headers
    role: str = "member"
    test: bool = False
    key_limit: int | None = None
    key_window_s: int | None = None

    def identity_headers(self) -> list[tuple[bytes, bytes]]:
        """What the backend is told about the caller (the client's own copies are dropped)."""
        out = [(b"x-gateway-user", self.user.encode())]
        if self.workspace:
            out.append((b"x-gateway-workspace", self.workspace.encode()))
        if self.key_id:
            out.append((b"x-gateway-key-id", self.key_id.encode()))
        return out
