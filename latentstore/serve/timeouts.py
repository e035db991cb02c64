"""Read deadlines for uvicorn's HTTP/1.1 (h11) protocol: a request's headers must arrive within
`header_timeout_s` and its body within `body_timeout_s` after them, or the connection is closed.

uvicorn has only a keep-alive timeout, which the first byte of a request cancels: a client that sends half
a request line, or headers and part of a body, then waits, held a connection (and, mid-body, an app task)
forever (issue #26: 20 of 20 half-sent requests still held after 30 s). Here one timer per connection follows
h11's view of the client:
    IDLE (waiting for a request line and headers)  -> the header deadline
    SEND_BODY (headers read, body not complete)    -> the body deadline, total (a drip-fed body is cut too)
    DONE / closed                                  -> no deadline: the request is in, the app is working
A dropped connection is one log line; an app reading the body sees a disconnect (ClientDisconnect).
"""
from __future__ import annotations

import logging

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("latentstore.serve")


class DeadlineConfig(uvicorn.Config):
    """uvicorn's Config with the protocol below and its two deadlines (picklable: `--workers` sends it to each
    worker process)."""

    def __init__(self, app, *, header_timeout_s: float, body_timeout_s: float, **kw):
        super().__init__(app, http=DeadlineH11Protocol, ws="none", **kw)  # no upgrades: nothing bypasses the timer
        self.header_timeout_s = header_timeout_s  # seconds for a request line and headers
        self.body_timeout_s = body_timeout_s  # seconds for the whole body once the headers are in


class DeadlineH11Protocol(H11Protocol):
    def __init__(self, config, server_state, app_state, _loop=None):
        super().__init__(config, server_state, app_state, _loop)
        self.header_timeout_s = float(getattr(config, "header_timeout_s", 10.0))
        self.body_timeout_s = float(getattr(config, "body_timeout_s", 60.0))
        self._deadline = None  # the armed TimerHandle
        self._waiting_for = None  # "headers" | "body": what the armed timer waits for

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._follow()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def _follow(self) -> None:
        """Arm, keep or cancel the deadline for what the client owes now."""
        if self.transport is None or self.transport.is_closing():
            return self._disarm()
        state = self.conn.their_state
        want = "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
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
        if what == "headers" and self.cycle is not None and not self.conn.trailing_data[0]:
            self.transport.close()  # idle after an answer (keep-alive), not a half-sent request: no log line
            return
        who = "%s:%d" % self.client if self.client else "a client"
        log.warning("dropped the connection from %s: its request %s did not arrive within %g s", who, what, seconds)
        self.transport.close()
