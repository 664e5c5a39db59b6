"""A tiny SMTP server on loopback that records messages (EHLO/HELO, MAIL, RCPT, DATA, QUIT).

    sink = SmtpSink(); await sink.start(); ... sink.url → "smtp://127.0.0.1:PORT"
    sink.messages → [Mail(sender, recipients, data: bytes)]; sink.fail = True → 451 on DATA
"""

from __future__ import annotations

import asyncio
import contextlib
import email
from dataclasses import dataclass, field
from email.message import Message


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    data: bytes

    def parsed(self) -> Message:
        return email.message_from_bytes(self.data)


@dataclass
class SmtpSink:
    messages: list[Mail] = field(default_factory=list)
    fail: bool = False  # answer DATA's end with 451 (a temporary failure)
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                       ) -> None:
        def reply(line: str) -> None:
            writer.write(line.encode() + b"\r\n")

        sender, recipients = "", list[str]()
        try:
            reply("220 sink ESMTP ready")
            await writer.drain()
            while True:
                raw = await reader.readline()
                if not raw:
                    return
                line = raw.decode("latin-1").rstrip("\r\n")
                verb = line[:4].upper()
                if verb == "EHLO":
                    reply("250-sink")
                    reply("250 8BITMIME")
                elif verb == "HELO":
                    reply("250 sink")
                elif verb == "MAIL":
                    sender, recipients = _address(line), []
                    reply("250 OK")
                elif verb == "RCPT":
                    recipients.append(_address(line))
                    reply("250 OK")
                elif verb == "DATA":
                    reply("354 end with .")
                    await writer.drain()
                    lines = []
                    while True:
                        chunk = await reader.readline()
                        if chunk in (b".\r\n", b".\n", b""):
                            break
                        lines.append(chunk[1:] if chunk.startswith(b"..") else chunk)
                    if self.fail:
                        reply("451 try again later")
                    else:
                        self.messages.append(Mail(sender, recipients, b"".join(lines)))
                        reply("250 queued")
                elif verb == "RSET":
                    sender, recipients = "", []
                    reply("250 OK")
                elif verb == "NOOP":
                    reply("250 OK")
                elif verb == "QUIT":
                    reply("221 bye")
                    await writer.drain()
                    return
                else:
                    reply("502 not implemented")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _address(line: str) -> str:
    start, end = line.find("<"), line.find(">")
    return line[start + 1:end] if 0 <= start < end else line.split(":", 1)[-1].strip()
