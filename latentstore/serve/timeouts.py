"""Read deadlines for uvicorn's HTTP/1.1 protocol (httptools): a request's headers must arrive within
`header_timeout_s` and its body within `body_timeout_s` after them, or the connection is closed.

uvicorn has only a keep-alive timeout, which the first byte of a request cancels: a client that sends half
a request line, or headers and part of a body, then waits, held a connection (and, mid-body, an app task)
forever (issue #26: 20 of 20 half-sent requests still held after 30 s). Here one timer per connection follows
the parser's view of the client:
    no request in progress, the last one answered  -> the header deadline (idle keep-alive: closed, no log line)
    a request begun, its headers not complete       -> the header deadline, kept from before its first byte
    headers read, body not complete                 -> the body deadline, total (a drip-fed body is cut too)
    the request complete, the app working           -> no deadline
A dropped connection is one log line; an app reading the body sees a disconnect (ClientDisconnect).

Why httptools and not h11 (which this followed until issue #30): the C parser costs ~0.1 ms less CPU per
request, a tenth of a latent upload's whole server time.
"""
from __future__ import annotations

import logging

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("latentstore.serve")
MAX_HEAD_BYTES = 16 * 1024  # a request line and headers: h11's bound, which llhttp does not have (a client could
# otherwise grow a connection's header buffer for the whole header deadline)


class DeadlineConfig(uvicorn.Config):
    """uvicorn's Config with the protocol below and its two deadlines (picklable: `--workers` sends it to each
    worker process)."""

    def __init__(self, app, *, header_timeout_s: float, body_timeout_s: float, **kw):
        super().__init__(app, http=DeadlineHttpToolsProtocol, ws="none", **kw)  # no upgrades: nothing bypasses the timer
        self.header_timeout_s = header_timeout_s  # seconds for a request line and headers
        self.body_timeout_s = body_timeout_s  # seconds for the whole body once the headers are in


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, config, server_state, app_state, _loop=None):
        super().__init__(config, server_state, app_state, _loop)
        self.header_timeout_s = float(getattr(config, "header_timeout_s", 10.0))
        self.body_timeout_s = float(getattr(config, "body_timeout_s", 60.0))
        self._deadline = None  # the armed TimerHandle
        self._waiting_for = None  # "headers" | "body": what the armed timer waits for
        self._in_request = False  # the parser is inside a request (begun, not complete)
        self._headers_in = False  # ... and has its headers
        self._head_bytes = 0  # bytes received since the last request's headers were complete

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._follow()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not (self._in_request and self._headers_in):
            self._head_bytes += len(data)
        super().data_received(data)
        if self._head_bytes > MAX_HEAD_BYTES and not self._headers_in and not self.transport.is_closing():
            log.warning("refused a request from %s: its request line and headers passed %d bytes",
                        "%s:%d" % self.client if self.client else "a client", MAX_HEAD_BYTES)
            self.send_400_response(f"request line and headers over {MAX_HEAD_BYTES} bytes")
        self._follow()

    # the parser's callbacks (uvicorn's own, then what the client owes)
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_request, self._headers_in = True, False

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._headers_in, self._head_bytes = True, 0

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_request = False

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def _owed(self):
        if self._in_request:
            return "body" if self._headers_in else "headers"
        if self.cycle is None or self.cycle.response_complete:
            return "headers"  # the next request (or none: an idle keep-alive connection)
        return None  # the request is in: the app is working

    def _follow(self) -> None:
        """Arm, keep or cancel the deadline for what the client owes now."""
        if self.transport is None or self.transport.is_closing():
            return self._disarm()
        want = self._owed()
        if want == self._waiting_for:
            return  # a total deadline: more bytes of the same part do not extend it
        self._disarm()
        if want is not None:
            seconds = self.header_timeout_s if want == "headers" else self.body_timeout_s
            self._deadline = self.loop.call_later(seconds, self._expired, want, seconds)
            self._waiting_for = want

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self._waiting_for = None

    def _expired(self, what: str, seconds: float) -> None:
        self._deadline = self._waiting_for = None
        if self.transport.is_closing():
            return
        if what == "headers" and not self._in_request and self.cycle is not None:
            self.transport.close()  # idle after an answer (keep-alive), not a half-sent request: no log line
            return
        who = "%s:%d" % self.client if self.client else "a client"
        log.warning("dropped the connection from %s: its request %s did not arrive within %g s", who, what, seconds)
        self.transport.close()
