"""The HTTP routes, one module per concern, all on one router (`api`)."""
# each registers its routes on `api`
from . import face, groups, people, reembed, registry, service  # noqa: F401
from .common import Gateway, api

# The image routes (those documenting a form upload) and their JSON bodies.
FORM_ROUTES = {route.path: route.endpoint.__annotations__["body"]
               for route in api.routes if route.openapi_extra}

__all__ = ["FORM_ROUTES", "Gateway", "api"]
