"""``tcp`` check: healthy when a TCP connection to ``host:port`` is accepted (then closed at once)."""

from __future__ import annotations

import anyio

from services.agent.checks.base import Outcome

__all__ = ["TcpProbe"]


class TcpProbe:
    kind = "tcp"

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    async def probe(self) -> Outcome:
        try:
            stream = await anyio.connect_tcp(self.host, self.port)
        except OSError as exc:
            return Outcome(False, f"connect to {self.host}:{self.port}: {exc.strerror or exc}")
        await stream.aclose()
        return Outcome(True, f"connected to {self.host}:{self.port}")

    async def aclose(self) -> None:
        return None
