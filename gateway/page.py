"""The try-it page at `/`: plain HTML, CSS and JavaScript files from gateway/static/,
served as they are (no build step, nothing from a CDN). It calls the JSON API with
multipart uploads, like `curl -F`."""
import pathlib

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = pathlib.Path(__file__).parent / "static"
PAGE_ASSETS = "/ui"


def install_page(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount(PAGE_ASSETS, StaticFiles(directory=STATIC), name="page-assets")
