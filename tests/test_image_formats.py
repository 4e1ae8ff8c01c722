"""The format allow-list and header readers both processes run before any pixel is decoded:
real images in every allowed format read right (and decode to the size their header
declares), crafted bombs and malformed headers are refused without a decode."""
import io
import struct

import pytest
from PIL import Image

from backend.images import decode_bytes
from face_contract.errors import InvalidInput
from face_contract.images import MAX_IMAGE_PIXELS, check_limits, image_header
from gateway_support import png_header_only
from support import FACES, needs_shared

FACE = FACES / "silent_face" / "image_T1.jpg"


def encoded(fmt: str, size=(120, 90), **options) -> bytes:
    out = io.BytesIO()
    Image.linear_gradient("L").convert("RGB").resize(size).save(out, fmt, **options)
    return out.getvalue()


@pytest.mark.parametrize("fmt, options, kind", [
    ("JPEG", {}, "JPEG"), ("JPEG", {"progressive": True}, "JPEG"), ("PNG", {}, "PNG"),
    ("GIF", {}, "GIF"), ("BMP", {}, "BMP"), ("TIFF", {}, "TIFF"),
    ("TIFF", {"compression": "tiff_lzw"}, "TIFF"), ("WEBP", {}, "WebP"),
    ("WEBP", {"lossless": True}, "WebP"), ("WEBP", {"exif": b"Exif\x00\x00II*\x00"}, "WebP"),
])
def test_every_allowed_format_reads_its_size_and_decodes_to_it(fmt, options, kind):
    data = encoded(fmt, (123, 77), **options)
    assert image_header(data) == (kind, 123, 77)
    assert decode_bytes(data).shape == (77, 123, 3)


def test_big_endian_tiff_and_os2_bmp_headers():
    entries = struct.pack(">HHIHH", 256, 3, 1, 640, 0) + struct.pack(">HHIHH", 257, 3, 1, 480, 0)
    tiff = b"MM\x00*" + struct.pack(">IH", 8, 2) + entries + b"\0" * 4
    assert image_header(tiff) == ("TIFF", 640, 480)
    core = b"BM" + b"\0" * 12 + struct.pack("<IHHHH", 12, 640, 480, 1, 24)
    assert image_header(core) == ("BMP", 640, 480)


@needs_shared
def test_real_photos_read_the_size_pillow_reads():
    for path in sorted(FACES.glob("*/*.jpg"))[:200] + sorted(FACES.glob("*/*.png"))[:50]:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            assert image_header(data)[1:] == img.size, path


def _jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(encoded("JPEG", (32, 32)))
    sof = next(i for i in range(2, len(data)) if data[i] == 0xFF and data[i + 1] == 0xC0)
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _gif_declaring(width: int, height: int) -> bytes:
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b"\x2c"
            + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00\x3b")


def _tiff_declaring(width: int, height: int) -> bytes:
    entries = struct.pack("<HHII", 256, 4, 1, width) + struct.pack("<HHII", 257, 4, 1, height)
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 2) + entries + b"\0" * 4


def _webp_vp8x_declaring(width: int, height: int) -> bytes:
    w, h = (width - 1).to_bytes(3, "little"), (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 22) + b"WEBPVP8X" + struct.pack("<I", 10) + b"\0" * 4 + w + h


BOMBS = {  # a few hundred bytes each, declaring billions of pixels
    "PNG": png_header_only(100_000, 100_000), "JPEG": _jpeg_declaring(65_000, 65_000),
    "GIF": _gif_declaring(65_535, 65_535), "TIFF": _tiff_declaring(1 << 20, 1 << 20),
    "WebP": _webp_vp8x_declaring(1 << 24, 1 << 24),
    "BMP": b"BM" + b"\0" * 12 + struct.pack("<Iii", 40, 1 << 20, -(1 << 20)) + b"\0" * 28,
}


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_decompression_bombs_are_refused_from_the_header_in_both_processes(kind):
    data = BOMBS[kind]
    assert len(data) < 1000
    for check in (check_limits, decode_bytes):
        with pytest.raises(InvalidInput, match=f"over the {MAX_IMAGE_PIXELS} pixel limit"):
            check(data, "img")


REFUSED = {
    "PSD": b"8BPS\x00\x01" + b"\0" * 40, "ICO": b"\x00\x00\x01\x00\x01\x00" + b"\0" * 40,
    "SVG": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9e9"/>',
    "Netpbm": b"P6\n60000 60000\n255\n", "PDF": b"%PDF-1.7\n",
    "ISO media": b"\0\0\0\x1cftypheic" + b"\0" * 20,
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_formats_off_the_allow_list_are_refused_by_name(name):
    with pytest.raises(InvalidInput, match=f"img is a {name}.*accepted formats: JPEG"):
        check_limits(REFUSED[name], "img")


MALFORMED = {
    "cut-short PNG": (png_header_only(64, 64)[:20], "PNG header is cut short"),
    "PNG without IHDR": (b"\x89PNG\r\n\x1a\n" + b"\0\0\0\x0dIDAT" + b"\0" * 17, "IHDR"),
    "JPEG without a frame": (b"\xff\xd8\xff\xda\x00\x08" + b"\0" * 20, "no frame header"),
    "JPEG with a bad length": (b"\xff\xd8\xff\xe0\x00\x01", "shorter than its own length"),
    "JPEG of zero height": (_jpeg_declaring(64, 0), "no height"),
    "JPEG of endless fill bytes": (b"\xff\xd8" + b"\xff" * 5_000_000, "fill bytes"),
    "GIF frame off its screen": (
        b"GIF89a" + struct.pack("<HHBBB", 10, 10, 0, 0, 0) + b"\x2c"
        + struct.pack("<HHHHB", 0, 0, 60000, 60000, 0), "larger than its logical screen"),
    "TIFF directory past the end": (b"II*\x00" + struct.pack("<I", 1 << 30), "cut short"),
    "TIFF without sizes": (b"II*\x00\x08\x00\x00\x00\x00\x00", "no image width"),
    "WebP of unknown chunk": (b"RIFF\0\0\0\0WEBPABCD" + b"\0" * 20, "unknown first chunk"),
    "animated WebP": (b"RIFF\0\0\0\0WEBPVP8X\x0a\0\0\0\x02" + b"\0" * 9, "animated"),
    "BMP with a zero width": (b"BM" + b"\0" * 12 + struct.pack("<Iii", 40, 0, 10), "width"),
    "unknown bytes": (b"hello world", "starts with bytes 68 65 6c"),
    "empty": (b"", "(none)"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_headers_are_refused_never_decoded(case):
    data, words = MALFORMED[case]
    for check in (check_limits, decode_bytes):
        with pytest.raises(InvalidInput, match=f"img .*{words}".replace("(", r"\(")
                           .replace(")", r"\)")):
            check(data, "img")


def test_a_file_whose_pixels_disagree_with_its_header_is_refused():
    data = bytearray(encoded("PNG", (64, 64)))
    data[16:24] = struct.pack(">II", 64, 65)  # IHDR says one more row than the pixels hold
    with pytest.raises(InvalidInput, match="could not be decoded|decoded to 64x64"):
        decode_bytes(bytes(data), "img")
