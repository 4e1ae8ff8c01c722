"""Request bodies, bounded in size, in total and in time; a request whose client
has gone is cancelled.

- Over `max_bytes` (from Content-Length before reading, or while reading): 413.
- Over `max_inflight_bytes` summed over every body held right now: 503 with
  Retry-After, so many large uploads at once cannot exhaust memory.
- Not received within `body_timeout_s`: 408 (a slow client is cut off).

The whole body is buffered here (every route parses it whole anyway) and replayed
to the app, so the app never sees a truncated body. While the app runs, the
connection is watched: when the client disconnects the app's task is cancelled,
and with it the backend call it awaits (gRPC cancels the RPC).
"""
import asyncio
import contextlib

from .admission import RETRY_AFTER_S
from ..errors import error_response


class _Refused(Exception):
    def __init__(self, response):
        super().__init__()
        self.response = response


class BodyLimitMiddleware:
    def __init__(self, app, max_bytes: int, max_inflight_bytes: int, body_timeout_s: float):
        self.app, self.max_bytes = app, max_bytes
        self.max_inflight_bytes, self.body_timeout_s = max_inflight_bytes, body_timeout_s
        self.inflight_bytes = 0  # touched only on the event loop: no lock needed

    def _hold(self, more: int) -> None:
        """Counts `more` body bytes as held, or refuses the request when over the total."""
        if self.inflight_bytes + more > self.max_inflight_bytes:
            raise _Refused(error_response(
                503, f"the gateway holds its limit of {self.max_inflight_bytes} request body "
                     f"bytes in flight; retry shortly", retry_after_s=RETRY_AFTER_S))
        self.inflight_bytes += more

    def _too_large(self, size: str) -> _Refused:
        return _Refused(error_response(
            413, f"request body is {size}, over the {self.max_bytes} byte limit"))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        declared = int(declared) if declared is not None and declared.isdigit() else 0
        held, chunks, size = 0, [], 0
        try:
            try:
                if declared > self.max_bytes:
                    raise self._too_large(f"{declared} bytes")
                self._hold(declared)  # reserved up front: no read starts past the total
                held = declared
                async with asyncio.timeout(self.body_timeout_s):
                    while True:
                        message = await receive()
                        if message["type"] != "http.request":  # client went away
                            return
                        chunks.append(message.get("body", b""))
                        size += len(chunks[-1])
                        if size > self.max_bytes:
                            raise self._too_large(f"more than {self.max_bytes} bytes")
                        if size > held:  # no (or a short) Content-Length: count as it comes
                            self._hold(size - held)
                            held = size
                        if not message.get("more_body", False):
                            break
            except _Refused as refused:
                return await refused.response(scope, receive, send)
            except TimeoutError:
                late = error_response(408, f"the request body did not arrive within "
                                           f"{self.body_timeout_s:g} s")
                return await late(scope, receive, send)
            await self._run_until_disconnect(scope, chunks, receive, send)
        finally:
            self.inflight_bytes -= held

    async def _run_until_disconnect(self, scope, chunks: list[bytes], receive, send) -> None:
        gone = asyncio.Event()
        replayed = answered = False

        async def replay():
            nonlocal replayed
            if not replayed:  # joined here and not kept: the app may free the body early
                replayed = True
                body = b"".join(chunks)
                chunks.clear()
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def watch():
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        async def send_noting_the_end(message):
            nonlocal answered
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered = True  # uvicorn reports a disconnect once a response is complete
            await send(message)

        app = asyncio.create_task(self.app(scope, replay, send_noting_the_end))
        watcher = asyncio.create_task(watch())
        try:
            await asyncio.wait([app, watcher], return_when=asyncio.FIRST_COMPLETED)
            if watcher.done() and not answered:  # the client left: its work is for nobody
                app.cancel()
        finally:
            watcher.cancel()
            if not app.done() and asyncio.current_task().cancelling():
                app.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await app
