"""JSON error bodies for every failure the gateway answers.

Status codes come from backend/errors.py: a FaceError (raised here or rebuilt
from a backend's gRPC status) maps through http_status_for, and HTTP-only
statuses (413, unknown routes) take their `type` from HTTP_ERROR_TYPES.
"""
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from face_contract.errors import HTTP_ERROR_TYPES, FaceError, http_status_for

log = logging.getLogger("gateway")


class ApiError(Exception):
    """A failure whose HTTP status has no gRPC counterpart (413, 400 on gateway-only input)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def error_type(status: int) -> str:
    # Statuses PROTOCOL.md names no type for (405, ...) are the client's mistake or ours.
    return HTTP_ERROR_TYPES.get(status, "invalid_request" if status < 500 else "internal")


def error_response(status: int, message: str, retry_after_s: int | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    return JSONResponse({"error": {"code": status, "message": message, "type": error_type(status)}},
                        status_code=status, headers=headers)


MAX_REPORTED_PROBLEMS = 5
MAX_PROBLEM_CHARS = 200


def _problem(err: dict) -> str:
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query")]
    if err.get("type") == "json_invalid":
        return f"malformed JSON: {err.get('ctx', {}).get('error', err.get('msg'))}"
    if not loc:  # the body as a whole: not JSON-typed, or not an object
        return ("the request body must be a JSON object sent with "
                "Content-Type: application/json")
    if err.get("type") == "missing":
        return f"{'.'.join(loc)} is required"
    # a validator's own message without pydantic's "Value error, " prefix
    msg = err.get("ctx", {}).get("error") if err.get("type") == "value_error" else None
    return f"{'.'.join(loc)}: {msg or err.get('msg')}"


def _validation_message(exc: RequestValidationError) -> str:
    """The first few problems, each cut short, and how many there were: a body with a
    million bad items must not come back as a million-line error."""
    errors = exc.errors()
    parts = []
    for err in errors[:MAX_REPORTED_PROBLEMS]:
        text = _problem(err)
        parts.append(text if len(text) <= MAX_PROBLEM_CHARS
                     else text[:MAX_PROBLEM_CHARS - 3] + "...")
    if len(errors) > MAX_REPORTED_PROBLEMS:
        parts.append(f"and {len(errors) - MAX_REPORTED_PROBLEMS} more problems "
                     f"({len(errors)} in all)")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    async def on_face_error(_: Request, exc: FaceError):
        status = http_status_for(exc.grpc_code)[0]  # 503: a backend down or busy, for now
        return error_response(status, str(exc), retry_after_s=1 if status == 503 else None)

    async def on_api_error(_: Request, exc: ApiError):
        return error_response(exc.status, str(exc))

    async def on_validation(_: Request, exc: RequestValidationError):
        # Clients rely on 400 for bad input (PROTOCOL section 2), not FastAPI's 422.
        return error_response(400, _validation_message(exc))

    async def on_http(request: Request, exc: HTTPException):
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, message, headers=exc.headers)  # 405: Allow

    async def on_unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}")

    app.add_exception_handler(FaceError, on_face_error)
    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
