"""multipart/form-data uploads on the image routes, turned into their JSON bodies.

`curl -F img=@photo.jpg -F model=NAME .../v1/face/embed` sends the photo as a file
part; this pure-ASGI middleware rewrites such a request into the JSON body the
route already takes (file parts base64-encoded, form fields as values), so routes
and schemas stay JSON-first. It sits inside BodyLimitMiddleware, so the body it
reads is already bounded, and it parses on a worker thread, not the event loop.
The body is fed to the parser piece by piece and each piece dropped once parsed,
and the built body goes to the route as parsed JSON (never as JSON text to parse
again), so a file part is held as its bytes and its base64 text only.

Form fields: numbers and booleans go through as text and pydantic converts them
("0.5", "true"); a list field (`actions`) is repeated (`-F actions=age -F
actions=gender`) or one JSON array; `labels` is one JSON object
(`-F 'labels={"team": "blue"}'`); an empty field counts as not sent.
"""
import asyncio
import base64
import collections
import io
import typing

import pydantic_core
from pydantic import BaseModel
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import create_form_parser

from face_contract.errors import InvalidInput
from face_contract.images import MAX_IMAGE_BYTES

from ..errors import error_response
from ..schemas import IMAGE_FIELDS
from .jsonbody import FORM_BODY, too_many_values

MAX_PARTS = 256  # a form of this API has a few fields and at most 32 photos
B64_PIECE_BYTES = 3 * 256 * 1024  # a multiple of 3: the pieces' texts join without padding


def _kind(model: type[BaseModel], name: str) -> type | None:
    """list, dict or None (a scalar) for the field's type, `X | None` unwrapped."""
    annotation = model.model_fields[name].annotation
    for arg in (annotation, *typing.get_args(annotation)):
        origin = typing.get_origin(arg) or arg
        if origin in (list, dict):
            return origin
    return None


def _base64_text(data: io.BytesIO) -> str:
    """The file's base64 text, encoded a piece at a time: one b64encode of a 20 MB file holds
    the GIL for tens of milliseconds, and the event loop waits on it (a piece takes about 1 ms).
    The file is emptied first, so it and the text are never held twice over."""
    with data.getbuffer() as view:
        pieces = [base64.b64encode(view[at:at + B64_PIECE_BYTES]).decode("ascii")
                  for at in range(0, len(view), B64_PIECE_BYTES)]
    data.close()
    return "".join(pieces)


def form_to_json(model: type[BaseModel], fields: list[tuple[str, str]],
                 files: list[tuple[str, io.BytesIO]]) -> dict:
    """The JSON body for `model` from a form's text fields and file parts (emptied here)."""
    images = [name for name in model.model_fields if name in IMAGE_FIELDS]
    body: dict = {}
    for name, data in files:
        if name not in images:
            raise InvalidInput(f"file part '{name}' is not an image field here; send the image "
                               f"as {' or '.join(images)}")
        if (size := data.seek(0, io.SEEK_END)) > MAX_IMAGE_BYTES:  # never worth encoding
            raise InvalidInput(f"{name} is {size} bytes, over the {MAX_IMAGE_BYTES} byte limit")
        encoded = _base64_text(data)
        if _kind(model, name) is list:  # several photos: one part each
            body.setdefault(name, []).append(encoded)
            continue
        if name in body:
            raise InvalidInput(f"{name} is sent more than once")
        body[name] = encoded
    values: dict[str, list[str]] = {}
    for name, value in fields:
        if value != "":
            values.setdefault(name, []).append(value)
    for name, texts in values.items():
        if name in body:
            raise InvalidInput(f"{name} is sent more than once")
        kind = _kind(model, name) if name in model.model_fields else None
        if kind is list:
            body[name] = _json(name, texts[0], list) if texts[0].startswith("[") else texts
        elif kind is dict:
            body[name] = _json(name, texts[0], dict)
        elif len(texts) > 1:
            raise InvalidInput(f"{name} is sent more than once")
        else:
            body[name] = texts[0]
    return body


def _json(name: str, text: str, kind: type):
    try:  # pydantic-core's parser: bounded nesting depth, and fast
        value = pydantic_core.from_json(text)
    except ValueError:
        value = None
    if not isinstance(value, kind):
        shape = '{"key": "value"}' if kind is dict else '["a", "b"]'
        raise InvalidInput(f"{name} must be JSON text such as {shape}, got {text[:60]!r}")
    return value


def parse_form(content_type: bytes, chunks: collections.deque) -> tuple[list, list]:
    """(text fields, file parts) of a multipart body given as pieces, each as (name, value)
    in order; the pieces are consumed."""
    fields, files = [], []

    def text(data: bytes | None) -> str:
        return (data or b"").decode("utf-8", "replace")

    def count_part():
        if len(fields) + len(files) >= MAX_PARTS:
            raise InvalidInput(f"the form has more than {MAX_PARTS} parts")

    def on_field(field):
        count_part()
        if (why := too_many_values(field.value or b"")) is not None:  # before it is decoded
            raise InvalidInput(f"{text(field.field_name)}: {why}")
        fields.append((text(field.field_name), text(field.value)))

    def on_file(file):
        count_part()
        file.file_object.seek(0)
        files.append((text(file.field_name), file.file_object))

    size = sum(len(chunk) for chunk in chunks)
    try:
        # Files stay in memory: the body is already bounded by the body limit.
        parser = create_form_parser({"Content-Type": content_type}, on_field, on_file,
                                    config={"MAX_MEMORY_FILE_SIZE": size + 1})
        while chunks:
            parser.write(chunks.popleft())
        parser.finalize()
    except (FormParserError, ValueError) as exc:
        raise InvalidInput(f"malformed multipart/form-data body: {exc}") from None
    return fields, files


class MultipartMiddleware:
    def __init__(self, app, routes: dict[str, type[BaseModel]]):
        self.app, self.routes = app, routes

    async def __call__(self, scope, receive, send):
        model = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        headers = dict(scope["headers"]) if model else {}
        content_type = headers.get(b"content-type", b"")
        if not content_type.lower().startswith(b"multipart/form-data"):
            return await self.app(scope, receive, send)
        chunks = collections.deque()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        try:
            body = await asyncio.to_thread(_convert, model, content_type, chunks)
        except InvalidInput as exc:
            return await error_response(400, str(exc))(scope, receive, send)
        # The route finds the body parsed (jsonbody.OffLoopJsonRoute); the request says
        # JSON so that FastAPI validates it as JSON.
        rewritten = [(k, v) for k, v in scope["headers"]
                     if k not in (b"content-type", b"content-length")]
        rewritten += [(b"content-type", b"application/json"), (b"content-length", b"1")]
        state = {**scope.get("state", {}), FORM_BODY: body}
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b" ", "more_body": False}
            return await receive()

        # The same scope, not a copy: the route FastAPI records in it is what /metrics counts
        # the request under (MetricsMiddleware, outside this one, reads it afterwards).
        scope["headers"], scope["state"] = rewritten, state
        await self.app(scope, replay, send)


def _convert(model: type[BaseModel], content_type: bytes, chunks: collections.deque) -> dict:
    fields, files = parse_form(content_type, chunks)
    return form_to_json(model, fields, files)


def form_schema(model: type[BaseModel]) -> dict:
    """The OpenAPI multipart/form-data request body of a JSON request model."""
    schema = model.model_json_schema()
    properties = {}
    for name, prop in schema["properties"].items():
        if name in IMAGE_FIELDS and _kind(model, name) is list:
            prop = {"type": "array", "items": {"type": "string", "format": "binary"},
                    "description": "image files, one part each"}
        elif name in IMAGE_FIELDS:
            prop = {"type": "string", "format": "binary", "description": "the image file"}
        elif _kind(model, name) is dict:
            prop = {"type": "string", "description": f"{prop.get('description', name)}; "
                                                     "JSON object text"}
        properties[name] = prop
    return {"requestBody": {"content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": properties, "required": schema.get("required", [])}}}}}
