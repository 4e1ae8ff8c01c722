"""Image checks both processes make before any pixel is decoded: base64 or a data
URI to bytes, the format allow-list, and the byte and pixel limits.

The pixel size comes from small header readers written here, one per allowed
format, each reading a bounded number of bytes at known offsets. Nothing that
decodes pixels runs before them, and a file they cannot read is refused, so a
few hundred bytes declaring a giant image never reach a decoder.
"""
import binascii
import re
import struct

from .errors import InvalidInput

MAX_IMAGE_BYTES = 20 * 1024 * 1024   # encoded image
MAX_IMAGE_PIXELS = 40_000_000        # width x height after decoding (about 7700x5200)
MIN_IMAGE_SIDE = 16
MAX_IMAGE_SIDE = 65535               # the most JPEG and GIF headers can declare
ALLOWED_FORMATS = ("JPEG", "PNG", "WebP", "BMP", "TIFF", "GIF")
MAX_JPEG_SEGMENTS = 1024   # markers walked before the frame header; each read is 4 bytes
MAX_JPEG_FILL = 4096      # 0xFF padding bytes between markers, in all
MAX_GIF_BLOCKS = 4096      # extension sub-blocks skipped before the first image descriptor
MAX_TIFF_TAGS = 4096
B64_PIECE_CHARS = 1 << 20

_DATA_URI = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,", re.IGNORECASE)

# Formats recognised only to be refused by name (the allow-list is above).
_REFUSED = [(b"8BPS", "PSD"), (b"\x00\x00\x01\x00", "ICO"), (b"\x00\x00\x02\x00", "CUR"),
            (b"%PDF", "PDF"), (b"qoif", "QOI"), (b"DDS ", "DDS"), (b"\x76\x2f\x31\x01", "OpenEXR"),
            (b"#?RADIANCE", "Radiance HDR"), (b"\xff\x0a", "JPEG XL"),
            (b"\x00\x00\x00\x0cJXL ", "JPEG XL"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
            (b"\xff\x4f\xff\x51", "JPEG 2000"), (b"\x59\xa6\x6a\x95", "Sun raster"),
            (b"II+\x00", "BigTIFF"), (b"MM\x00+", "BigTIFF")]
_NETPBM = re.compile(rb"^P[1-7F f]\s")


def _b64_piece(piece: str, final: bool) -> tuple[bytes, str]:
    """Decodes the whole quads of `piece` (all of it when final); returns them and the rest."""
    cut = len(piece) if final else len(piece) - len(piece) % 4
    quads = piece[:cut] + ("=" * (-cut % 4) if final else "")
    return binascii.a2b_base64(quads, strict_mode=True), piece[cut:]


def b64_to_bytes(text: str, field: str = "image") -> bytearray:
    """Base64 (line breaks allowed) or a base64 data URI -> bytes; anything else is a 400.

    Decoded a megabyte at a time: between pieces a thread waiting for the GIL (the
    gateway's event loop) gets it, and a piece has no copy of the whole text.
    """
    text = text.strip()
    if not text:
        raise InvalidInput(f"{field} is empty: send a base64 image or a data URI")
    prefix = _DATA_URI.match(text)
    start = prefix.end() if prefix else 0
    if len(text) - start > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise InvalidInput(f"{field} is larger than the {MAX_IMAGE_BYTES} byte limit")
    out, rest = bytearray(), ""
    try:
        for pos in range(start, len(text), B64_PIECE_CHARS):
            piece = rest + text[pos:pos + B64_PIECE_CHARS]
            final = pos + B64_PIECE_CHARS >= len(text)
            try:
                decoded, rest = _b64_piece(piece, final)
            except binascii.Error:  # line breaks or spaces: drop them and try again
                decoded, rest = _b64_piece("".join(piece.split()), final)
            out += decoded
    except (binascii.Error, ValueError):
        # A common mistake is a file path: it is not read, it must be sent.
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise InvalidInput(
            f"{field} is neither an http(s) URL, a data: URI nor valid base64 (got {shown!r}); "
            f"expected the image bytes base64-encoded, data:image/jpeg;base64,... or "
            f"https://...; to send a file, upload it as multipart/form-data") from None
    return out  # not copied into bytes: every reader here and OpenCV take a bytearray


class _Header:
    """Bounds-checked reads of a byte string; a read past the end means a malformed header."""

    def __init__(self, data: bytes, kind: str):
        self.data, self.kind = data, kind

    def unpack(self, fmt: str, offset: int) -> tuple:
        size = struct.calcsize(fmt)
        if offset < 0 or offset + size > len(self.data):
            raise ValueError(f"the {self.kind} header is cut short")
        return struct.unpack_from(fmt, self.data, offset)


def _jpeg(h: _Header) -> tuple[int, int]:
    pos, fill = 2, 0
    for _ in range(MAX_JPEG_SEGMENTS):
        while h.unpack("B", pos)[0] == 0xFF and h.unpack("B", pos + 1)[0] == 0xFF:
            pos, fill = pos + 1, fill + 1  # fill bytes before a marker
            if fill > MAX_JPEG_FILL:
                raise ValueError(f"the JPEG has more than {MAX_JPEG_FILL} fill bytes")
        mark, kind = h.unpack("BB", pos)
        if mark != 0xFF:
            raise ValueError("the JPEG header has no marker where one must be")
        if kind == 0xD8 or 0xD0 <= kind <= 0xD7 or kind == 0x01:  # markers without a length
            pos += 2
            continue
        if kind in (0xD9, 0xDA):
            raise ValueError("the JPEG has no frame header before its image data")
        length = h.unpack(">H", pos + 2)[0]
        if length < 2:
            raise ValueError("the JPEG header has a segment shorter than its own length field")
        if 0xC0 <= kind <= 0xCF and kind not in (0xC4, 0xC8, 0xCC):  # start of frame
            height, width = h.unpack(">HH", pos + 5)
            if height == 0:
                raise ValueError("the JPEG frame header declares no height (DNL is refused)")
            return width, height
        pos += 2 + length
    raise ValueError(f"the JPEG has no frame header in its first {MAX_JPEG_SEGMENTS} segments")


def _png(h: _Header) -> tuple[int, int]:
    length, kind = h.unpack(">I4s", 8)
    if kind != b"IHDR" or length != 13:
        raise ValueError("the PNG does not start with an IHDR chunk")
    return h.unpack(">II", 16)


def _gif(h: _Header) -> tuple[int, int]:
    width, height, flags = h.unpack("<HHB", 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # global colour table
    blocks = 0
    while True:
        tag = h.unpack("B", pos)[0]
        if tag == 0x2C:  # the first image descriptor: its frame must lie on the screen
            left, top, w, hh = h.unpack("<HHHH", pos + 1)
            if left + w > width or top + hh > height:
                raise ValueError("the GIF's first frame is larger than its logical screen")
            return width, height
        if tag != 0x21:
            raise ValueError("the GIF has no image descriptor after its header")
        pos += 2  # extension introducer and label, then sub-blocks up to a zero length
        while (size := h.unpack("B", pos)[0]) != 0:
            pos += 1 + size
            blocks += 1
            if blocks > MAX_GIF_BLOCKS:
                raise ValueError(f"the GIF has more than {MAX_GIF_BLOCKS} extension blocks "
                                 "before its first image")
        pos += 1


def _bmp(h: _Header) -> tuple[int, int]:
    dib = h.unpack("<I", 14)[0]
    if dib == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sides
        return h.unpack("<HH", 18)
    if dib < 40:
        raise ValueError(f"the BMP has an unknown {dib}-byte info header")
    width, height = h.unpack("<ii", 18)
    if width <= 0:
        raise ValueError("the BMP declares a width that is not positive")
    return width, abs(height)  # a negative height means rows stored top-down


def _webp(h: _Header) -> tuple[int, int]:
    chunk = h.unpack("4s", 12)[0]
    if chunk == b"VP8 ":
        if h.unpack("3s", 23)[0] != b"\x9d\x01\x2a":
            raise ValueError("the WebP VP8 frame has no start code")
        width, height = h.unpack("<HH", 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        signature, bits = h.unpack("<BI", 20)
        if signature != 0x2F:
            raise ValueError("the WebP lossless stream has no signature")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        flags = h.unpack("B", 20)[0]
        if flags & 0x02:
            raise ValueError("animated WebP is not supported: send a still image")
        w0, w1, w2, h0, h1, h2 = h.unpack("6B", 24)
        return (w0 | w1 << 8 | w2 << 16) + 1, (h0 | h1 << 8 | h2 << 16) + 1
    raise ValueError(f"the WebP has an unknown first chunk {chunk!r}")


def _tiff(h: _Header) -> tuple[int, int]:
    order = "<" if h.data[:2] == b"II" else ">"
    ifd = h.unpack(order + "I", 4)[0]
    count = h.unpack(order + "H", ifd)[0]
    if count > MAX_TIFF_TAGS:
        raise ValueError(f"the TIFF's first directory has {count} tags, over {MAX_TIFF_TAGS}")
    sides = {}
    for i in range(count):
        tag, kind = h.unpack(order + "HH", ifd + 2 + 12 * i)
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT or LONG held in the entry
            if kind == 3:
                sides[tag] = h.unpack(order + "H", ifd + 10 + 12 * i)[0]
            elif kind == 4:
                sides[tag] = h.unpack(order + "I", ifd + 10 + 12 * i)[0]
    if 256 not in sides or 257 not in sides:
        raise ValueError("the TIFF's first directory has no image width and length")
    return sides[256], sides[257]


_READERS = [(b"\xff\xd8\xff", "JPEG", _jpeg), (b"\x89PNG\r\n\x1a\n", "PNG", _png),
            (b"GIF87a", "GIF", _gif), (b"GIF89a", "GIF", _gif), (b"BM", "BMP", _bmp),
            (b"II*\x00", "TIFF", _tiff), (b"MM\x00*", "TIFF", _tiff)]


def _refused_format(data: bytes) -> str | None:
    for magic, name in _REFUSED:
        if data.startswith(magic):
            return name
    if data[4:8] == b"ftyp":  # ISO media: HEIC, AVIF and friends
        return f"ISO media ({data[8:12].decode('latin-1').strip() or 'unknown brand'})"
    if _NETPBM.match(data[:3]):
        return "Netpbm (PBM/PGM/PPM)"
    head = data[:256].lstrip().lower()
    if head.startswith((b"<?xml", b"<svg", b"<!doctype svg")) or b"<svg" in head:
        return "SVG"
    return None


def image_header(data: bytes, field: str = "image") -> tuple[str, int, int]:
    """(format, width, height) from the header alone; 400 for a format off the allow-list
    or a header the reader for its format cannot make sense of."""
    allowed = ", ".join(ALLOWED_FORMATS)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        kind, reader = "WebP", _webp
    else:
        kind, reader = next(((k, r) for magic, k, r in _READERS if data.startswith(magic)),
                            (None, None))
    if reader is None:
        name = _refused_format(data)
        if name:
            raise InvalidInput(f"{field} is a {name} image; accepted formats: {allowed}")
        raise InvalidInput(f"{field} is not an image in an accepted format ({allowed}); "
                           f"it starts with bytes {data[:8].hex(' ') or '(none)'}")
    try:
        width, height = reader(_Header(data, kind))
    except (ValueError, struct.error) as exc:
        raise InvalidInput(f"{field} has a malformed {kind} header: {exc}") from None
    if width <= 0 or height <= 0:
        raise InvalidInput(f"{field} has a malformed {kind} header: it declares {width}x{height}")
    return kind, width, height


def check_limits(data: bytes, field: str = "image") -> tuple[str, int, int]:
    """Byte, format and pixel checks from the header alone; returns (format, width, height)."""
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidInput(f"{field} is {len(data)} bytes, over the {MAX_IMAGE_BYTES} byte limit")
    kind, width, height = image_header(data, field)
    if width * height > MAX_IMAGE_PIXELS:
        raise InvalidInput(f"{field} is {width}x{height} pixels, over the "
                           f"{MAX_IMAGE_PIXELS} pixel limit")
    if max(width, height) > MAX_IMAGE_SIDE:
        raise InvalidInput(f"{field} is {width}x{height} pixels; each side must be at most "
                           f"{MAX_IMAGE_SIDE}")
    return kind, width, height
