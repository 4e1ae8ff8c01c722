"""A cap on image requests served at once: past it, 503 with Retry-After at once,
before the body is read, rather than a queue that grows without bound."""
from .errors import error_response

# The routes whose work is an image on a backend (each holds a body and a backend slot).
IMAGE_ROUTES = frozenset({"/v1/face/verify", "/v1/face/analyze", "/v1/face/embed",
                          "/v1/face/register", "/v1/face/identify", "/v1/detection"})
RETRY_AFTER_S = 1


class ConcurrencyLimitMiddleware:
    def __init__(self, app, max_concurrency: int):
        self.app, self.max_concurrency = app, max_concurrency
        self.active = 0  # touched only on the event loop: no lock needed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in IMAGE_ROUTES:
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
