"""The service routes: models, health, readiness and metrics."""
from fastapi import Depends, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from .. import schemas as s
from ..errors import error_response
from ..middleware import auth
from .common import Gateway, api, face, gateway


# Where the backends run: for a read-write key, or a loopback caller with keys off.
BACKEND_DETAILS = ("pid", "address", "backends")


@api.get("/v1/models", response_model=s.ModelList, **face)
async def models(request: Request, gw: Gateway = Depends(gateway)):
    items = gw.backends.describe()
    if not auth.may_see_backends(request):
        items = [{k: v for k, v in item.items() if k not in BACKEND_DETAILS} for item in items]
    return s.ModelList(data=[s.ModelInfo(**item) for item in items])


@api.get("/healthz")
async def healthz():
    return {"status": "ok"}


@api.get("/readyz")
async def readyz(gw: Gateway = Depends(gateway)):
    states = await gw.backends.probe()
    # A degraded pool still serves: some of its backends answer.
    failing = {name: state for name, state in states.items()
               if state not in ("ok", "idle") and not state.startswith("degraded")}
    if failing:
        return error_response(503, "backends not ready: " + "; ".join(
            f"{name}: {state}" for name, state in failing.items()))
    return {"status": "ready", "backends": states}


@api.get("/metrics", response_class=PlainTextResponse)  # documented as text/plain
async def metrics(gw: Gateway = Depends(gateway)):
    return Response(gw.metrics.render(), media_type=CONTENT_TYPE_LATEST)


