"""Request bodies, bounded in size, in total and in time; a request whose client
has gone is cancelled.

- Over `max_bytes` (from Content-Length before reading, or while reading): 413.
- Over `max_inflight_bytes` summed over every body held right now: 503 with
  Retry-After, so many large uploads at once cannot exhaust memory. Bytes count as
  they arrive, never from Content-Length: a client that declares a large body and
  sends nothing holds nothing.
- Not received within `body_timeout_s`, or arriving slower than `min_rate` bytes a
  second on average once RATE_GRACE_S have passed, or with a pause longer than
  RATE_GRACE_S: 408. A trickling client is cut off early, and the bytes it held go
  back to the budget.

The whole body is buffered here (every route parses it whole anyway) and replayed
to the app piece by piece, each piece let go as it is handed on, so the app never
sees a truncated body and a parser that consumes pieces holds no second copy. While the app runs, the
connection is watched: when the client disconnects the app's task is cancelled,
and with it the backend call it awaits (gRPC cancels the RPC).
"""
import asyncio
import collections
import contextlib

from .admission import RETRY_AFTER_S
from ..errors import error_response

RATE_GRACE_S = 5.0  # a body may start slowly, or pause, this long


class _Refused(Exception):
    def __init__(self, response):
        super().__init__()
        self.response = response


class BodyLimitMiddleware:
    def __init__(self, app, max_bytes: int, max_inflight_bytes: int, body_timeout_s: float,
                 min_rate: int):
        self.app, self.max_bytes = app, max_bytes
        self.max_inflight_bytes, self.body_timeout_s = max_inflight_bytes, body_timeout_s
        self.min_rate = min_rate
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
        held, chunks = 0, collections.deque()
        try:
            try:
                if declared > self.max_bytes:
                    raise self._too_large(f"{declared} bytes")
                loop = asyncio.get_running_loop()
                started = last = loop.time()
                while True:
                    # The earliest of: the whole-body deadline, the end of a pause, and the
                    # moment the average rate falls under min_rate with the bytes held now.
                    deadline = min(started + self.body_timeout_s, last + RATE_GRACE_S,
                                   started + RATE_GRACE_S + held / self.min_rate)
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                    last = loop.time()
                    if message["type"] != "http.request":  # client went away
                        return
                    chunk = message.get("body", b"")
                    if held + len(chunk) > self.max_bytes:
                        raise self._too_large(f"more than {self.max_bytes} bytes")
                    self._hold(len(chunk))
                    held += len(chunk)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
            except _Refused as refused:
                return await refused.response(scope, receive, send)
            except TimeoutError:
                late = error_response(408, f"the request body did not arrive within "
                                           f"{self.body_timeout_s:g} s, or came slower than "
                                           f"{self.min_rate} bytes/s or paused over "
                                           f"{RATE_GRACE_S:g} s")
                late.headers["connection"] = "close"  # the connection is not worth keeping
                return await late(scope, receive, send)
            await self._run_until_disconnect(scope, chunks, receive, send)
        finally:
            self.inflight_bytes -= held

    async def _run_until_disconnect(self, scope, chunks: collections.deque, receive,
                                    send) -> None:
        gone = asyncio.Event()
        replayed = answered = False

        async def replay():
            nonlocal replayed
            if not replayed:  # not kept once handed on: the app may free the body early
                body = chunks.popleft() if chunks else b""
                replayed = not chunks
                return {"type": "http.request", "body": body, "more_body": not replayed}
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
