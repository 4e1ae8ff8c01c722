"""The OpenAPI schema as the service really answers.

Bad input gets 400 with the `{"error": ...}` body (errors.py); FastAPI documents a
422 HTTPValidationError on every route with parameters, which never happens here.
"""
from fastapi import FastAPI


def drop_validation_422(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            for operations in schema["paths"].values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
