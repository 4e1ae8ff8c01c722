"""uvicorn's HTTP protocol with bounds on the request head.

uvicorn limits neither how long a client may take to send its request line and
headers nor (with httptools) how large they may be, and arms its keep-alive
timer only after a first response: a client that connects and trickles a byte
a second would hold its connection for ever. Here a timer runs from the moment
a connection opens (and from the end of the keep-alive wait after each
response) until the headers are complete: past it the connection gets 408 and
is closed. A request line and headers larger than the cap get 431, counted as
parsed and, for a head that never completes, as received.
"""
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..errors import error_response, error_type

DEFAULT_MAX_HEADER_BYTES = 16 * 1024


def _raw_error(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": status, "message": message,
                                 "type": error_type(status)}}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


def guarded_protocol(header_timeout_s: float, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES):
    """A protocol class for uvicorn's `http=` with these head limits."""
    too_large_message = f"the request line and headers exceed {max_header_bytes} bytes"

    async def too_large(scope, receive, send):  # an ASGI app answering one request
        response = error_response(431, too_large_message)
        response.headers["connection"] = "close"
        await response(scope, receive, send)

    class GuardedHttpProtocol(HttpToolsProtocol):
        _head_timer = None
        _in_head = False    # from a message's first byte to the end of its headers
        _raw_bytes = 0      # bytes received wholly inside the current head
        _parsed_bytes = 0   # request line and headers parsed for the current request

        def _arm(self, idle_s: float = 0.0) -> None:
            self._head_timer = self.loop.call_later(idle_s + header_timeout_s,
                                                    self._head_too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _refuse(self, status: int, reason: str, message: str) -> None:
            self._disarm()
            if not self.transport.is_closing():
                self.transport.write(_raw_error(status, reason, message))
                self.transport.close()

        def _head_too_slow(self) -> None:
            self._head_timer = None
            self._refuse(408, "Request Timeout", f"the request line and headers did not "
                                                 f"arrive within {header_timeout_s:g} s")

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            was_in_head = self._in_head
            super().data_received(data)
            # A head that never completes is buffered by the parser: count what it holds.
            # (A piece that also ends a previous body is not counted: its size is bounded.)
            if was_in_head and self._in_head:
                self._raw_bytes += len(data)
                if self._raw_bytes > max_header_bytes:
                    self._refuse(431, "Request Header Fields Too Large", too_large_message)

        def on_message_begin(self) -> None:
            self._in_head, self._raw_bytes, self._parsed_bytes = True, 0, 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._parsed_bytes += len(url)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._parsed_bytes += len(name) + len(value)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._disarm()
            if self._parsed_bytes <= max_header_bytes:
                return super().on_headers_complete()
            app, self.app = self.app, too_large  # this request alone gets the 431
            try:
                super().on_headers_complete()
            finally:
                self.app = app

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.timeout_keep_alive_task is not None:  # idle, waiting for the next request
                self._arm(idle_s=self.timeout_keep_alive)  # an idle connection is closed first

    return GuardedHttpProtocol
