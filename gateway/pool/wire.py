"""Backend requests with large string fields, serialised without stalling the event loop.

protobuf serialises a 48 MiB message in one call that holds the GIL throughout (0.8 s
on a busy 2-core machine), and setting a 24 MiB string field copies and checks it
the same way, so no other request is served meanwhile, whatever thread it runs on.
The wire format lets fields come in any order, so protobuf serialises the small
fields and each large string (base64 text: ASCII) is appended as its own
length-delimited field, encoded a megabyte at a time: between pieces the event
loop gets the GIL back.
"""
from google.protobuf.message import Message

PIECE_CHARS = 1 << 20
LENGTH_DELIMITED = 2


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _text_pieces(text: str) -> list[bytes]:
    if not text.isascii():  # not an image: small, encoded whole
        data = text.encode("utf-8")
        return [_varint(len(data)), data]
    return [_varint(len(text)), *(text[i:i + PIECE_CHARS].encode("ascii")
                                  for i in range(0, len(text), PIECE_CHARS))]


def serialise(message: Message, large: dict[str, str | list[str]]) -> bytes:
    """`message` with the string (or repeated string) fields in `large` set, as bytes."""
    pieces = [message.SerializeToString()]
    for name, values in large.items():
        tag = _varint(message.DESCRIPTOR.fields_by_name[name].number << 3 | LENGTH_DELIMITED)
        for text in [values] if isinstance(values, str) else values:
            pieces += [tag, *_text_pieces(text)]
    return b"".join(pieces)
