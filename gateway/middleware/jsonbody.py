"""JSON request bodies parsed on a worker thread, every string checked for valid UTF-8.

FastAPI parses a JSON body on the event loop; a 48 MiB body would stall every
other client for a noticeable time. This route class parses it first on a
thread (pydantic-core's parser, several times faster than the json module, so the
GIL is held briefly) and hands the result to FastAPI through the request's JSON
cache, where its own validation finds it.
"""
import asyncio
import email.message
import json

import pydantic_core
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request

SURROGATE_REPARSE_BYTES = 1024 * 1024
MAX_JSON_SEPARATORS = 20_000  # 32 labels of 256 commas each still fit
FORM_BODY = "form_body"  # request state: a multipart body already turned into parsed JSON


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json"))


def _not_utf8(text: str) -> bool:
    if text.isascii():  # O(1): CPython keeps an ASCII flag
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _lone_surrogate(value) -> tuple | None:
    """The path of the first string (key or value) that is not valid UTF-8, or None.

    JSON's \\ud800 escapes decode to lone surrogates, which cannot be encoded or stored.
    A loop over a stack, not recursion: nesting depth is the client's choice.
    """
    stack = [(value, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if _not_utf8(value):
                return path
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                if _not_utf8(key):  # named with the surrogate escaped, so it can be sent
                    stack.append((key, (*path, key.encode("utf-8", "backslashreplace").decode())))
                else:
                    stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, index)) for index, item in reversed(list(enumerate(value))))
    return None


def too_many_values(text: bytes) -> str | None:
    """Why a JSON text is refused unparsed, or None. No request of this API needs more than a
    few hundred values (32 labels, 32 images, 8 actions); a million empty lists would cost
    seconds and hundreds of MB to build only to fail validation. ',' '[' and '{' bound the
    values a text holds, and counting them is a fast scan."""
    found = text.count(b",") + text.count(b"[") + text.count(b"{")
    if found > MAX_JSON_SEPARATORS:
        return (f"the JSON holds {found} ',', '[' and '{{' characters, over the "
                f"{MAX_JSON_SEPARATORS} any request of this API needs")
    return None


def _invalid(message: str) -> RequestValidationError:
    return RequestValidationError([{"type": "json_invalid", "loc": ("body",), "input": {},
                                    "msg": "JSON decode error", "ctx": {"error": message}}])


def _parse(body: bytes):
    if (why := too_many_values(body)) is not None:
        raise _invalid(why)
    try:
        return pydantic_core.from_json(body)
    except ValueError as exc:
        if "hex escape" not in str(exc):
            raise _invalid(str(exc)) from None
        if len(body) > SURROGATE_REPARSE_BYTES:
            raise _invalid(f"a string holds a lone surrogate escape such as \\ud800, which is "
                           f"not valid UTF-8 ({exc})") from None
    # pydantic-core refuses lone surrogate escapes outright; the json module decodes them,
    # so the field can be named (a small body only: the json module is the slow parser).
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise _invalid(exc.msg) from None
    except RecursionError:
        raise _invalid("arrays and objects are nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise _invalid(f"the body is not UTF-8 ({exc.reason})") from None


def parse_json(body: bytes):
    """The parsed body; RequestValidationError for malformed JSON or invalid UTF-8."""
    parsed = _parse(body)
    path = _lone_surrogate(parsed)
    if path is not None:
        raise RequestValidationError([{
            "type": "string_unicode", "loc": ("body", *path), "input": None,
            "msg": "is not valid UTF-8 (it holds a lone surrogate escape such as \\ud800)"}])
    return parsed


class OffLoopJsonRoute(APIRoute):
    def get_route_handler(self):
        handle = super().get_route_handler()

        async def parse_then_handle(request: Request):
            form = request.scope.get("state", {}).pop(FORM_BODY, None)
            if form is not None:  # built by multipart.MultipartMiddleware
                request._json, request._body = form, b" "
            elif _is_json(request.headers.get("content-type")):
                # Joined from pieces that are then let go (a growing bytearray would hold
                # less for a moment, but pydantic-core copies a bytearray before parsing).
                body = await request.body()
                if body:  # FastAPI's request.json() returns this cache
                    request._json = await asyncio.to_thread(parse_json, body)
                    # FastAPI reads the raw body again only to see it is not empty: a
                    # placeholder lets the parsed strings be the one copy of a big body.
                    request._body = b" "
                    del body
            return await handle(request)
        return parse_then_handle
