"""A small asyncio SMTP server speaking raw lines, scripted to refuse or drop the client's session
at a chosen step (the message's final "." included), that records whether the client closed its
side afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

# As a reply, or at the end of one: send what comes before, then hang up (FIN) and keep listening.
DROP = "<drop>"

DEFAULT_REPLIES: Mapping[str, str] = {
    "EHLO": "250-relay.test\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN",
    "HELO": "250 relay.test",
    "MAIL": "250 2.1.0 Ok",
    "RCPT": "250 2.1.5 Ok",
    "DATA": "354 End data with <CR><LF>.<CR><LF>",
    "RSET": "250 2.0.0 Ok",
    "NOOP": "250 2.0.0 Ok",
    "QUIT": "221 2.0.0 Bye",
}


@dataclass(frozen=True)
class Script:
    """The greeting (None: never greet), the replies that differ from DEFAULT_REPLIES, and the
    reply to a message's final "." (None: never answer it)."""

    greeting: str | None = "220 relay.test ESMTP"
    replies: Mapping[str, str] = field(default_factory=dict)
    after_data: str | None = "250 2.0.0 Ok: queued"


@dataclass
class Session:
    script: Script
    commands: list[str] = field(default_factory=list)
    messages: int = 0
    # The client closed its side: the server's reader hit EOF (or a reset).
    peer_closed: bool = False

    @property
    def verbs(self) -> list[str]:
        return [command.split(" ", 1)[0].upper() for command in self.commands]


class RefusingSmtpServer:
    """New sessions follow `script`; a session's own `script` can be changed while it is open."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.sessions: list[Session] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 20)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in list(self._writers):
            writer.close()
        # Python 3.11's wait_closed does not wait for the sessions still open.
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(self.script)
        self.sessions.append(session)
        self._writers.add(writer)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        try:
            if await self._converse(session, reader, writer):
                return
            # Whatever the script did, listen on until the client hangs up: that is what is checked.
            while await reader.read(4096):
                pass
            session.peer_closed = True
        except (ConnectionError, asyncio.IncompleteReadError):
            session.peer_closed = True
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _converse(
        self, session: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Plays the script; True when the client hung up while the server was still talking."""
        greeting = session.script.greeting
        if greeting is not None and not await _say(writer, greeting):
            return False
        while line := await reader.readline():
            command = line.decode("ascii", "replace").rstrip("\r\n")
            session.commands.append(command)
            verb = command.split(" ", 1)[0].upper()
            reply = session.script.replies.get(
                verb, DEFAULT_REPLIES.get(verb, "502 5.5.2 Error: command not recognized")
            )
            if not await _say(writer, reply):
                return False
            if verb == "DATA" and reply.startswith("354"):
                await reader.readuntil(b"\r\n.\r\n")
                session.messages += 1
                after_data = session.script.after_data
                if after_data is not None and not await _say(writer, after_data):
                    return False
            if verb == "QUIT":
                writer.write_eof()
                return False
        session.peer_closed = True
        return True


async def _say(writer: asyncio.StreamWriter, text: str) -> bool:
    """Writes the reply; False when the script hangs up after it."""
    hang_up = text.endswith(DROP)
    text = text.removesuffix(DROP)
    if text:
        writer.write(text.encode("ascii") + b"\r\n")
        await writer.drain()
    if hang_up:
        writer.write_eof()
    return not hang_up
