"""The ASGI app: the routes (gateway/routes/) behind the middleware (gateway/middleware/),
over the backend pools (gateway/pool/) and the registry stores (gateway/registry/).

Routes resolve the model and store first (cheap 400/404), then turn image
strings into base64 bytes (fetching URLs safely), then call the model's backend.
"""
import contextlib

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from .docs import drop_validation_422
from .errors import install_error_handlers
from .fetch import UrlFetcher
from .middleware import auth
from .middleware.admission import ConcurrencyLimitMiddleware
from .middleware.bodylimit import BodyLimitMiddleware
from .middleware.metrics import Metrics, MetricsMiddleware
from .middleware.multipart import MultipartMiddleware
from .page import install_page
from .pool.backends import Backends
from .registry import open_stores
from .routes import FORM_ROUTES, Gateway, api
from .settings import Settings

__all__ = ["FORM_ROUTES", "create_app"]


def create_app(settings: Settings) -> FastAPI:
    stores = open_stores(settings.data_dir, settings.store_specs(), settings.default_store,
                         settings.ann_threshold)
    backends = Backends(settings)
    gw = Gateway(backends=backends, stores=stores,
                 fetcher=UrlFetcher(settings.allow_private_urls, settings.max_url_bytes,
                                    settings.url_timeout_s),
                 metrics=Metrics(stores, backends), keep_crops=settings.keep_crops)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        backends.start_watching()
        default = backends.default_model()
        if default is not None:
            backends.preload(default)
        try:
            yield
        finally:
            await backends.close()
            stores.close()

    # Swagger UI and ReDoc come from the fastapi-offline package: /docs works offline.
    app = FastAPIOffline(title="Face gateway", version="0.1.0", lifespan=lifespan,
                         description="Face verification, analysis, detection and a durable "
                                     "face registry over LocalAI-compatible gRPC face backends. "
                                     "Image routes take JSON or multipart/form-data uploads.")
    app.state.gateway = gw
    app.state.auth = auth.Policy(auth.ApiKeys(settings.api_keys, settings.api_keys_file),
                                 settings.allowed_hosts, settings.open_metrics)
    app.include_router(api)
    install_page(app)
    drop_validation_422(app)
    install_error_handlers(app)
    app.add_middleware(MultipartMiddleware, routes=FORM_ROUTES)  # inside the body limit
    # Inside the body limit: a request takes an image-request slot once its body is whole,
    # so clients trickling bodies hold no slot.
    app.add_middleware(ConcurrencyLimitMiddleware, routes=frozenset(FORM_ROUTES),
                       max_concurrency=settings.max_concurrency)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       max_inflight_bytes=settings.max_inflight_bytes,
                       body_timeout_s=settings.body_timeout_s,
                       min_rate=settings.min_body_rate)
    # Outside both: a caller without a valid key takes no concurrency slot and sends no body.
    app.add_middleware(auth.AuthMiddleware, policy=app.state.auth)
    auth.document(app, app.state.auth)
    app.add_middleware(MetricsMiddleware, metrics=gw.metrics)  # added last: outermost
    return app
