"""``http`` check: a request to a URL; healthy when the answer has the expected status (200 unless configured).
Redirects are not followed (a 301 is an answer, as Consul's own check does not follow them either)."""

from __future__ import annotations

import aiohttp

from services.agent.checks.base import Outcome

__all__ = ["HttpProbe"]


class HttpProbe:
    kind = "http"

    def __init__(self, url: str, *, expected: int = 200, method: str = "GET") -> None:
        self.url = url
        self.expected = expected
        self.method = method
        self._session: aiohttp.ClientSession | None = None

    async def probe(self) -> Outcome:
        if self._session is None:
            # no pooled connections: each check opens its own, so a dead backend is seen as dead at once
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        try:
            async with self._session.request(self.method, self.url, allow_redirects=False) as resp:
                await resp.read()
                if resp.status == self.expected:
                    return Outcome(True, f"HTTP {resp.status}")
                return Outcome(False, f"HTTP {resp.status}, expected {self.expected}")
        except aiohttp.ClientError as exc:
            return Outcome(False, f"{type(exc).__name__}: {exc}")
        except OSError as exc:
            return Outcome(False, exc.strerror or str(exc))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
