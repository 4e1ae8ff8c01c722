"""Request image strings (URL, data URI, bare base64) -> base64 bytes for the backend.

Limits are checked here, from the image header, so an oversized image gets its
400 before it travels to a backend; decoding itself is the backend's.
"""
import base64
import re

from face_contract.errors import InvalidInput
from face_contract.images import b64_to_bytes, check_limits

from .fetch import UrlFetcher

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")  # base64 never contains ':'


async def image_b64(text: str, field: str, fetcher: UrlFetcher) -> str:
    text = text.strip()
    if _SCHEME.match(text):  # the fetcher refuses schemes other than http(s)
        data = await fetcher.fetch(text, field)
        if not data:
            raise InvalidInput(f"{field}: the image URL returned no bytes")
    else:
        data = b64_to_bytes(text, field)
    check_limits(data, field)
    return base64.b64encode(data).decode("ascii")
