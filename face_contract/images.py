"""Image checks both processes make before any pixel is decoded: base64 or a data
URI to bytes, and the byte and pixel limits read from the header alone.
"""
import base64
import binascii
import io
import re

from PIL import Image

from .errors import InvalidInput

MAX_IMAGE_BYTES = 20 * 1024 * 1024   # encoded image
MAX_IMAGE_PIXELS = 40_000_000        # width x height after decoding (about 7700x5200)
MIN_IMAGE_SIDE = 16

_DATA_URI = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


def b64_to_bytes(text: str, field: str = "image") -> bytes:
    if not text:
        raise InvalidInput(f"{field} is empty: send a base64 image or a data URI")
    payload = _DATA_URI.sub("", text.strip(), count=1)
    if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise InvalidInput(f"{field} is larger than the {MAX_IMAGE_BYTES} byte limit")
    payload = _WHITESPACE.sub("", payload)  # base64 tools wrap lines
    try:
        return base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError):
        # A common mistake is a file path: it is not read, it must be sent.
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise InvalidInput(
            f"{field} is neither an http(s) URL, a data: URI nor valid base64 (got {shown!r}); "
            f"expected the image bytes base64-encoded, data:image/jpeg;base64,... or "
            f"https://...; to send a file, upload it as multipart/form-data") from None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from the header only, or None when Pillow cannot tell."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Image.DecompressionBombError:
        return (MAX_IMAGE_PIXELS, 2)  # far over the limit: reported as such by the caller
    except Exception:
        return None


def check_limits(data: bytes, field: str = "image") -> None:
    """Byte and pixel limits from the header alone (the gateway checks before forwarding)."""
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidInput(f"{field} is {len(data)} bytes, over the {MAX_IMAGE_BYTES} byte limit")
    size = image_size(data)
    if size and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise InvalidInput(f"{field} is {size[0]}x{size[1]} pixels, over the "
                           f"{MAX_IMAGE_PIXELS} pixel limit")
