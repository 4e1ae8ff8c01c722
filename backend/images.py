"""The one place that turns request image strings and bytes into BGR arrays.

Accepts base64 (with or without a `data:<mime>;base64,` prefix) or raw bytes,
applies EXIF orientation (cv2.IMREAD_COLOR does), and enforces the format
allow-list and limits of face_contract.images before any pixel is decoded.
GIF's first frame is decoded by Pillow: OpenCV reads GIF only in some builds.
"""
import io

import cv2
import numpy as np
from PIL import Image

from face_contract.errors import InvalidInput
from face_contract.images import MIN_IMAGE_SIDE, b64_to_bytes, check_limits


def _gif_first_frame(data: bytes) -> np.ndarray | None:
    try:
        with Image.open(io.BytesIO(data), formats=["GIF"]) as img:
            return cv2.cvtColor(np.asarray(img.convert("RGB")), cv2.COLOR_RGB2BGR)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def decode_bytes(data: bytes, field: str = "image") -> np.ndarray:
    kind, width, height = check_limits(data, field)
    if kind == "GIF":
        img = _gif_first_frame(data)
    else:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise InvalidInput(f"{field} could not be decoded as a {kind} image")
    h, w = img.shape[:2]
    if (w, h) not in ((width, height), (height, width)):  # EXIF orientation may turn it
        raise InvalidInput(f"{field} decoded to {w}x{h} pixels but its {kind} header "
                           f"declares {width}x{height}")
    if min(h, w) < MIN_IMAGE_SIDE:
        raise InvalidInput(f"{field} is {w}x{h} pixels; each side must be at least {MIN_IMAGE_SIDE}")
    return img


def decode(text: str, field: str = "image") -> np.ndarray:
    return decode_bytes(b64_to_bytes(text, field), field)
