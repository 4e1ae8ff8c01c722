"""Request image strings (URL, data URI, bare base64) -> base64 text for the backend.

Format and limits are checked here, from the image header, so a bad or oversized
image gets its 400 before it travels to a backend; decoding itself is the
backend's. The caller's base64 text is passed through as sent (the backend
accepts data URIs too), not decoded only to be encoded again. The checks run on
a worker thread: a 48 MiB body must not stall the event loop.
"""
import asyncio
import base64
import re

from face_contract.errors import InvalidInput
from face_contract.images import b64_to_bytes, check_limits

from .fetch import UrlFetcher

_SCHEME = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*://")  # base64 never contains ':'


def _check_text(text: str, field: str) -> None:
    if not text.isascii():  # O(1) for a str: CPython keeps an ASCII flag
        raise InvalidInput(f"{field} must be base64, a data URI or an http(s) URL; "
                           "it holds non-ASCII characters")
    check_limits(b64_to_bytes(text, field), field)


def _checked_b64(data: bytes, field: str) -> str:
    check_limits(data, field)
    return base64.b64encode(data).decode("ascii")


async def image_b64(text: str, field: str, fetcher: UrlFetcher) -> str:
    if _SCHEME.match(text):  # the fetcher refuses schemes other than http(s)
        data = await fetcher.fetch(text.strip(), field)
        if not data:
            raise InvalidInput(f"{field}: the image URL returned no bytes")
        return await asyncio.to_thread(_checked_b64, data, field)
    await asyncio.to_thread(_check_text, text, field)
    return text
