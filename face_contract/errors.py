"""The one place that maps failures to gRPC and HTTP status codes.

Engine code raises a FaceError subclass; the gRPC servicer turns it into the
subclass's gRPC code, and the gateway turns a gRPC code into an HTTP status and
error `type` with GRPC_TO_HTTP.
"""
import grpc


class FaceError(Exception):
    grpc_code = grpc.StatusCode.INTERNAL


class InvalidInput(FaceError):
    """The request or image is malformed (400)."""
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class NoFace(FaceError):
    """No face where one is needed (404)."""
    grpc_code = grpc.StatusCode.NOT_FOUND


class NotFound(FaceError):
    """An unknown model, identity or record (404)."""
    grpc_code = grpc.StatusCode.NOT_FOUND


class NotReady(FaceError):
    """No engine loaded, or the weights a request needs are missing (412)."""
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class Conflict(FaceError):
    """The request contradicts what is stored: templates another recognizer made (409)."""
    grpc_code = grpc.StatusCode.ABORTED


class Unavailable(FaceError):
    """The registry's database or disk is unreachable or refuses writes for now (503)."""
    grpc_code = grpc.StatusCode.UNAVAILABLE


# Message prefixes of the backend's answers that mean "load the model again" to the gateway:
# the backend lost its model (restarted) or another client loaded a different one.
NO_MODEL_LOADED = "no model loaded"
IDENTITY_MISMATCH = "model identity mismatch"


class Unauthenticated(FaceError):
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class Cancelled(FaceError):
    """The caller cancelled the call (its HTTP client went away): the work stops early."""
    grpc_code = grpc.StatusCode.CANCELLED


class Busy(FaceError):
    """The backend serves all the calls it has workers for: retry shortly (503)."""
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ModelLoadError(FaceError):
    """LoadModel could not build an engine; the message names the file or option."""


# gRPC status -> (HTTP status, error type) for the gateway's JSON error bodies.
GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found"),
    grpc.StatusCode.FAILED_PRECONDITION: (412, "precondition_failed"),
    grpc.StatusCode.ABORTED: (409, "conflict"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "unauthorized"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "forbidden"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "unimplemented"),
    grpc.StatusCode.UNAVAILABLE: (503, "unavailable"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (503, "unavailable"),
    # A backend that did not answer in time is down or hung for its caller: retry later.
    grpc.StatusCode.DEADLINE_EXCEEDED: (503, "unavailable"),
}
HTTP_ERROR_TYPES = {
    400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    409: "conflict", 412: "precondition_failed", 413: "payload_too_large", 501: "unimplemented",
    503: "unavailable", 500: "internal",
}


def http_status_for(code: grpc.StatusCode) -> tuple[int, str]:
    return GRPC_TO_HTTP.get(code, (500, "internal"))
