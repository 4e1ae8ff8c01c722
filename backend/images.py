"""The one place that turns request image strings and bytes into BGR arrays.

Accepts base64 (with or without a `data:<mime>;base64,` prefix) or raw bytes,
applies EXIF orientation (cv2.IMREAD_COLOR does), and enforces the limits of
face_contract.images before any pixel is decoded.
"""
import cv2
import numpy as np

from face_contract.errors import InvalidInput
from face_contract.images import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, b64_to_bytes, check_limits


def decode_bytes(data: bytes, field: str = "image") -> np.ndarray:
    check_limits(data, field)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise InvalidInput(f"{field} could not be decoded as an image (JPEG, PNG, WebP, BMP, TIFF)")
    h, w = img.shape[:2]
    if h * w > MAX_IMAGE_PIXELS:
        raise InvalidInput(f"{field} is {w}x{h} pixels, over the {MAX_IMAGE_PIXELS} pixel limit")
    if min(h, w) < MIN_IMAGE_SIDE:
        raise InvalidInput(f"{field} is {w}x{h} pixels; each side must be at least {MIN_IMAGE_SIDE}")
    return img


def decode(text: str, field: str = "image") -> np.ndarray:
    return decode_bytes(b64_to_bytes(text, field), field)
