"""The format allow-list and header readers both processes run before any pixel is decoded:
real images in every allowed format read right (and decode to the size their header
declares), crafted bombs and malformed headers are refused without a decode."""
import io
import struct
import zlib

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


# -- sizes that lie: a small declared size over large data, two ways or more per format -----
# Each is built to pass, or nearly pass, the header readers above; the decoder must still never
# decode more than the limits, whatever it reads (backend.images.decode_within_limits).

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _jpeg_frame_hidden_by_a_stuffed_zero() -> bytes:
    """`FF 00` is no marker to libjpeg (it scans on) but a segment of length FFE1 to a naive
    reader, which lands on a 16x16 frame header; libjpeg reads the 20000x20000 one first."""
    real = _jpeg_declaring(20000, 20000)
    head = b"\xff\xd8\xff\x00\xff\xe1\x00\x04\x00\x00" + real[2:]
    fake = b"\xff\xc0\x00\x11\x08\x00\x10\x00\x10\x03\x01\x11\x00\x02\x11\x01\x03\x11\x01"
    return head + b"\0" * (4 + 0xFFE1 - len(head)) + fake + b"\xff\xd9"


def _jpeg_second_frame() -> bytes:
    small = _jpeg_declaring(16, 16)
    sof = small.index(b"\xff\xc0")
    frame = small[sof:sof + 2 + struct.unpack(">H", small[sof + 2:sof + 4])[0]]
    return small[:2] + frame + _jpeg_declaring(20000, 20000)[2:]


def _png(width: int, height: int, *chunks: bytes) -> bytes:
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + b"".join(chunks) + _chunk(b"IEND", b"")


def _png_second_ihdr() -> bytes:
    return _png(16, 16, _chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)),
                _chunk(b"IDAT", zlib.compress(b"\0" * (20000 * 3 + 1) * 64)))


def _png_apng_frame() -> bytes:
    actl = _chunk(b"acTL", struct.pack(">II", 1, 0))
    fctl = _chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, 20000, 20000, 0, 0, 1, 1, 0, 0))
    return _png(16, 16, actl, fctl, _chunk(b"IDAT", zlib.compress(b"\0" * 60001 * 2000)))


def _png_inflating_to_gigabytes() -> bytes:
    return _png(16, 16, _chunk(b"IDAT", zlib.compress(b"\0" * 200_000_000, 9)))


def _gif(screen: tuple[int, int], frame: tuple[int, int, int, int], lzw: bytes) -> bytes:
    return (b"GIF89a" + struct.pack("<HHBBB", *screen, 0, 0, 0) + b"\x2c"
            + struct.pack("<HHHHB", *frame, 0) + b"\x02" + lzw + b"\x00\x3b")


def _gif_endless_data() -> bytes:
    return _gif((16, 16), (0, 0, 16, 16), (b"\xff" + b"\x00" * 255) * 40_000)


def _bmp(dib: int, width: int, height: int, pixels: int) -> bytes:
    if dib == 12:
        info = struct.pack("<IHHHH", 12, width, height, 1, 24)
    else:
        info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 0, 0, 0, 0)
        info += b"\0" * (dib - 40)
    offset = 14 + len(info)
    return b"BM" + struct.pack("<IHHI", offset + pixels, 0, 0, offset) + info + b"\x80" * pixels


def _webp(kind: bytes, payload: bytes, first: bytes = b"") -> bytes:
    body = b"WEBP" + first + kind + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _webp_canvas_over_a_large_frame() -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\0" * 4 + (15).to_bytes(3, "little") * 2
    bits = (16383 - 1) | (16383 - 1) << 14
    return _webp(b"VP8L", bytes([0x2F]) + struct.pack("<I", bits) + b"\0" * 4_000_000, vp8x)


def _webp_small_frame_over_large_data() -> bytes:
    bits = 15 | 15 << 14
    return _webp(b"VP8L", bytes([0x2F]) + struct.pack("<I", bits) + b"\xff" * 8_000_000)


def _tiff(entries: list[tuple[int, int, int]], tail: bytes = b"", next_ifd: int = 0) -> bytes:
    """Little-endian TIFF, one directory of LONG entries (tag, count 1, value) at offset 8."""
    body = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, 4, 1, value) for tag, value in entries)
    return b"II*\x00" + struct.pack("<I", 8) + body + struct.pack("<I", next_ifd) + tail


def _tiff_tags_given_twice() -> bytes:
    """libtiff keeps the first of a repeated tag; a reader keeping the last sees 16x16."""
    return _tiff([(256, 20000), (256, 16), (257, 20000), (257, 16), (258, 8), (262, 1),
                  (273, 200), (277, 1), (278, 20000), (279, 20000 * 20000)], b"\0" * 1000)


def _tiff_strip_over_the_file() -> bytes:
    return _tiff([(256, 16), (257, 16), (258, 8), (262, 1), (273, 200), (277, 1),
                  (278, 16), (279, 1 << 31)], b"\0" * 1000)


def _tiff_subifd() -> bytes:
    sub = 8 + 2 + 12 * 9 + 4
    return _tiff([(256, 16), (257, 16), (258, 8), (262, 1), (273, 0x7FFFFFF0), (277, 1),
                  (278, 16), (279, 256), (330, sub)],
                 struct.pack("<H", 2) + struct.pack("<HHII", 256, 4, 1, 20000)
                 + struct.pack("<HHII", 257, 4, 1, 20000) + b"\0" * 4)


LYING = {
    "JPEG frame hidden by a stuffed zero": _jpeg_frame_hidden_by_a_stuffed_zero,
    "JPEG second frame header": _jpeg_second_frame,
    "JPEG height by DNL": lambda: _jpeg_declaring(20000, 0),
    "PNG second IHDR": _png_second_ihdr,
    "PNG APNG frame over the canvas": _png_apng_frame,
    "PNG inflating to 200 MB": _png_inflating_to_gigabytes,
    "GIF frame over the screen": lambda: _gif((16, 16), (0, 0, 20000, 20000), b"\x01\x00"),
    "GIF frame placed off the screen": lambda: _gif((16, 16), (60000, 60000, 16, 16), b"\x01\x00"),
    "GIF endless data": _gif_endless_data,
    "BMP top-down, 16x16 over 15 MB": lambda: _bmp(40, 16, -16, 15_000_000),
    "BMP core header, 16x16 over 15 MB": lambda: _bmp(12, 16, 16, 15_000_000),
    "BMP V5 header declaring 20000x-20000": lambda: _bmp(124, 20000, -20000, 1000),
    "WebP canvas over a large frame": _webp_canvas_over_a_large_frame,
    "WebP small frame over large data": _webp_small_frame_over_large_data,
    "TIFF tags given twice": _tiff_tags_given_twice,
    "TIFF strip over the file": _tiff_strip_over_the_file,
    "TIFF SubIFD of 20000x20000": _tiff_subifd,
}


@pytest.mark.parametrize("case", sorted(LYING))
def test_sizes_that_lie_never_decode_more_than_the_limits(case):
    data = LYING[case]()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM from here
    before = rss_kib("VmRSS")
    try:  # refused, or decoded at the small size it declares
        assert decode_bytes(data, "img").shape == (16, 16, 3), case
    except InvalidInput:
        pass
    grown = (rss_kib("VmHWM") - before) / 1024
    print(f"\n{case}: {len(data) / 2**20:.1f} MiB, peak RSS +{grown:.0f} MiB")
    assert grown < 2 * len(data) / 2**20 + 50, f"{case}: +{grown:.0f} MiB"


def rss_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)
