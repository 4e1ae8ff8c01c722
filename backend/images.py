"""The one place that turns request image strings and bytes into BGR arrays.

Accepts base64 (with or without a `data:<mime>;base64,` prefix) or raw bytes,
applies EXIF orientation (cv2.IMREAD_COLOR does), and enforces the format
allow-list and limits of face_contract.images before any pixel is decoded.

Those limits are read by face_contract's own header readers, which a crafted file can
make disagree with the decoder (a JPEG marker one skips and the other reads, a tag given
twice). So the decode is bounded by the decoder itself: OpenCV checks the size its own
decoder read from the header against OPENCV_IO_MAX_IMAGE_* (set by backend/__init__.py)
before it allocates, and Pillow (GIF's first frame: OpenCV reads GIF only in some builds)
is asked for its size, the one it will decode, before it decodes.
"""
import io
import zlib

import cv2
import numpy as np
from PIL import Image

from face_contract.errors import InvalidInput
from face_contract.images import (MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, MIN_IMAGE_SIDE,
                                  b64_to_bytes, check_limits)


def _opencv_limits_active() -> bool:
    """A PNG one pixel wider than the limit (one row, its data cut short): refused by the size
    check when OpenCV read the limits, else a 196 KB allocation and a failed read."""
    png = bytearray(cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1].tobytes())
    png[16:20] = (MAX_IMAGE_SIDE + 1).to_bytes(4, "big")  # IHDR's width, then its CRC
    png[29:33] = zlib.crc32(png[12:29]).to_bytes(4, "big")
    try:
        cv2.imdecode(np.frombuffer(bytes(png), np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        return True
    return False


if not _opencv_limits_active():
    raise ImportError("OpenCV was loaded before the backend package set its image-size limits: "
                      "import backend before cv2")


def _gif_first_frame(data: bytes, field: str) -> np.ndarray | None:
    try:
        with Image.open(io.BytesIO(data), formats=["GIF"]) as img:
            width, height = img.size  # the screen, grown to the first frame: what gets decoded
            if width * height > MAX_IMAGE_PIXELS:
                raise InvalidInput(f"{field}'s GIF frame is {width}x{height} pixels, over the "
                                   f"{MAX_IMAGE_PIXELS} pixel limit")
            return cv2.cvtColor(np.asarray(img.convert("RGB")), cv2.COLOR_RGB2BGR)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def decode_within_limits(data: bytes, kind: str, field: str = "image") -> np.ndarray:
    """Pixels of `data` as the decoder reads it, refused (400) when the decoder's own reading of
    its header is over the limits: it allocates nothing larger."""
    if kind == "GIF":
        img = _gif_first_frame(data, field)
    else:
        try:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error as exc:
            if "validateInputImageSize" in str(exc):
                raise InvalidInput(f"{field}'s {kind} decoder reads a size over the limits "
                                   f"({MAX_IMAGE_PIXELS} pixels, {MAX_IMAGE_SIDE} a side) "
                                   "though its header declares less: the file is crafted "
                                   "or corrupt") from None
            img = None
    if img is None:
        raise InvalidInput(f"{field} could not be decoded as a {kind} image")
    return img


def decode_bytes(data: bytes, field: str = "image") -> np.ndarray:
    kind, width, height = check_limits(data, field)
    img = decode_within_limits(data, kind, field)
    h, w = img.shape[:2]
    if (w, h) not in ((width, height), (height, width)):  # EXIF orientation may turn it
        raise InvalidInput(f"{field} decoded to {w}x{h} pixels but its {kind} header "
                           f"declares {width}x{height}")
    if min(h, w) < MIN_IMAGE_SIDE:
        raise InvalidInput(f"{field} is {w}x{h} pixels; each side must be at least "
                           f"{MIN_IMAGE_SIDE}")
    return img


def decode(text: str, field: str = "image") -> np.ndarray:
    return decode_bytes(b64_to_bytes(text, field), field)
