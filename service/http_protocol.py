"""The HTTP protocol ``sleep-cds serve`` runs: uvicorn's httptools protocol plus a header deadline.

uvicorn bounds an idle keep-alive connection (``timeout_keep_alive``) but not one that trickles
its request line and headers a byte at a time (slowloris), nor a new connection that sends
nothing. Here a connection must finish each request's headers within
``CDS_HEADER_READ_TIMEOUT_S`` of connecting or of the request's first byte, or it is closed.
The body has its own deadline (``CDS_BODY_READ_TIMEOUT_S``, in ``api.middleware``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.config import get_settings


class HeaderDeadlineProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Read here, not passed in: uvicorn builds the protocol, in each worker process.
        self._header_timeout_s = get_settings().header_read_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self._header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()
