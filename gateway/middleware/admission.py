"""A cap on image requests served at once: past it, 503 with Retry-After at once
rather than a queue that grows without bound. It sits inside the body limit: a
request counts once its body is complete, so slow uploads hold no slot."""
from ..errors import error_response

RETRY_AFTER_S = 1


class ConcurrencyLimitMiddleware:
    """`routes`: the image routes (each holds a body and a backend slot)."""

    def __init__(self, app, routes: frozenset[str], max_concurrency: int):
        self.app, self.routes, self.max_concurrency = app, routes, max_concurrency
        self.active = 0  # touched only on the event loop: no lock needed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in self.routes:
            return await self.app(scope, receive, send)
        if self.active >= self.max_concurrency:
            busy = error_response(503, f"the gateway is serving its limit of "
                                       f"{self.max_concurrency} image requests; retry shortly",
                                  retry_after_s=RETRY_AFTER_S)
            return await busy(scope, receive, send)
        self.active += 1
        released = False

        def release():
            nonlocal released
            if not released:
                released, self.active = True, self.active - 1

        async def send_releasing_at_the_end(message):
            # Freed before the last byte goes out: a client that sends its next request
            # the moment it has this answer must not find its own slot still taken.
            if message["type"] == "http.response.body" and not message.get("more_body"):
                release()
            await send(message)

        try:
            await self.app(scope, receive, send_releasing_at_the_end)
        finally:
            release()
