"""Multipart uploads, error messages in the caller's field names, and the OpenAPI schema:
the form conversion on its own, then a real gateway on the real pack."""
import io
import json
import re

import httpx
import pytest
from PIL import Image

from face_contract.errors import InvalidInput
from gateway import schemas as s
from gateway.app import FORM_ROUTES, create_app
from gateway.middleware.multipart import form_to_json
from gateway.settings import Settings
from gateway_support import gateway_process, png_header_only, write_config
from support import FACES, image_b64, needs_shared

MODEL = "test-pack"
ANN = [FACES / "facenet_sandberg" / f"Anthony_Hopkins_000{i}.jpg" for i in (1, 2)]


def no_face_jpeg() -> bytes:
    """A real JPEG with no face in it: a smooth grey gradient."""
    out = io.BytesIO()
    Image.linear_gradient("L").resize((240, 240)).convert("RGB").save(out, "JPEG")
    return out.getvalue()


def test_form_fields_become_the_json_body():
    body = form_to_json(s.RegisterRequest,
                        [("name", "Ann"), ("labels", '{"team": "blue"}'), ("store", "")],
                        [("img", io.BytesIO(b"\xff\xd8jpeg"))])
    assert body == {"img": "/9hqcGVn", "name": "Ann", "labels": {"team": "blue"}}
    repeated = form_to_json(s.AnalyzeRequest, [("actions", "age"), ("actions", "gender"),
                                               ("anti_spoofing", "true")], [])
    assert repeated == {"actions": ["age", "gender"], "anti_spoofing": "true"}
    assert form_to_json(s.AnalyzeRequest, [("actions", '["age"]')], [])["actions"] == ["age"]


@pytest.mark.parametrize("fields, files, words", [
    ([], [("photo", b"x")], ["'photo' is not an image field", "img"]),
    ([("labels", "team=blue")], [], ["labels must be JSON text", "team=blue"]),
    ([("name", "a"), ("name", "b")], [], ["name is sent more than once"]),
    ([("img", "abc")], [("img", b"x")], ["img is sent more than once"]),
])
def test_form_mistakes_are_named(fields, files, words):
    with pytest.raises(InvalidInput) as err:
        form_to_json(s.RegisterRequest, fields, [(name, io.BytesIO(data)) for name, data in files])
    for word in words:
        assert word in str(err.value)


def test_openapi_documents_forms_examples_and_400_not_422(tmp_path):
    schema = create_app(Settings(models_dir=tmp_path, data_dir=tmp_path)).openapi()
    assert "HTTPValidationError" not in json.dumps(schema)
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            assert "422" not in operation["responses"], path
            if "requestBody" in operation:
                assert "400" in operation["responses"], path
    models = schema["components"]["schemas"]
    for path, model in FORM_ROUTES.items():
        content = schema["paths"][path]["post"]["requestBody"]["content"]
        form = content["multipart/form-data"]["schema"]["properties"]
        assert any("binary" in (prop.get("format"), prop.get("items", {}).get("format"))
                   for prop in form.values()), path  # a file, or files (imgs)
        assert models[model.__name__]["examples"], path
    assert set(FORM_ROUTES) == {"/v1/face/verify", "/v1/face/analyze", "/v1/face/embed",
                                "/v1/face/register", "/v1/face/identify", "/v1/detection",
                                "/v1/face/detect", "/v1/face/cluster"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    write_config(models, MODEL)
    with gateway_process(models, tmp_path_factory.mktemp("data"), "--default-model", MODEL,
                         "--max-body-bytes", "3000000") as (_, url), \
            httpx.Client(base_url=url, timeout=60) as client:
        yield client


def error_message(response, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]["message"]


@needs_shared
def test_curl_style_upload_returns_an_embedding(gw):
    with open(ANN[0], "rb") as photo:
        r = gw.post("/v1/face/embed", files={"img": photo}, data={"model": MODEL})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dim"] == len(body["embedding"]) == 128 and body["model"] == MODEL
    as_json = gw.post("/v1/face/embed", json={"img": image_b64(ANN[0])}).json()
    assert as_json["embedding"] == body["embedding"]


@needs_shared
def test_every_image_route_takes_a_form(gw):
    files = {"img1": ANN[0].read_bytes(), "img2": ANN[1].read_bytes()}
    verify = gw.post("/v1/face/verify", files=files, data={"threshold": "0.74"}).json()
    assert verify["verified"] is True and verify["threshold"] == 0.74
    one = {"img": ANN[0].read_bytes()}
    analyze = gw.post("/v1/face/analyze", files=one, data={"actions": ["age", "gender"]}).json()
    assert analyze["faces"][0]["dominant_gender"] == "Man"
    assert "unsupported_actions" not in analyze
    # actions no model here computes are said, not dropped without a word
    asked = gw.post("/v1/face/analyze", files=one,
                    data={"actions": ["age", "emotion", "race"]}).json()
    assert asked["unsupported_actions"] == ["emotion", "race"]
    assert "age" in asked["faces"][0] and "emotion" not in asked["faces"][0]
    reg = gw.post("/v1/face/register", files=one,
                  data={"name": "Anthony", "labels": '{"role": "actor"}'}).json()
    found = gw.post("/v1/face/identify", files={"img": ANN[1].read_bytes()},
                    data={"top_k": "1"}).json()["matches"]
    assert [(m["id"], m["labels"]) for m in found] == [(reg["id"], {"role": "actor"})]
    detected = gw.post("/v1/detection", files={"image": ANN[0].read_bytes()},
                       data={"threshold": "0.5"}).json()["detections"]
    assert len(detected) == 1
    # the path LocalAI's docs name answers the same, as a form and as JSON
    alias = gw.post("/v1/face/detect", files={"image": ANN[0].read_bytes()},
                    data={"threshold": "0.5"}).json()["detections"]
    assert alias == detected
    assert gw.post("/v1/face/detect", json={"image": image_b64(ANN[0]),
                                            "threshold": 0.5}).json()["detections"] == detected


@needs_shared
def test_bad_forms_are_400_with_the_field(gw):
    assert "'photo' is not an image field" in error_message(
        gw.post("/v1/face/embed", files={"photo": ANN[0].read_bytes()}), 400)
    assert "top_k" in error_message(
        gw.post("/v1/face/identify", files={"img": ANN[0].read_bytes()}, data={"top_k": "many"}),
        400)
    for content_type in ("multipart/form-data; boundary=x", "multipart/form-data"):
        assert "malformed multipart" in error_message(gw.post(
            "/v1/face/embed", content=b"--x\r\nnot a part",
            headers={"content-type": content_type}), 400)
    too_big = gw.post("/v1/face/embed", files={"img": b"\xff" * 3_100_000})
    assert too_big.status_code == 413


@needs_shared
@pytest.mark.parametrize("route, field", [
    ("/v1/face/embed", "img"), ("/v1/face/register", "img"), ("/v1/face/identify", "img"),
    ("/v1/detection", "image"), ("/v1/face/verify", "img2"),
])
def test_errors_name_the_callers_field(gw, route, field):
    files = {field: no_face_jpeg()}
    if route == "/v1/face/verify":
        files["img1"] = ANN[0].read_bytes()
    data = {"name": "nobody"} if route.endswith("register") else {}
    r = gw.post(route, files=files, data=data)
    if route == "/v1/detection":  # no face is an empty list there; a broken image names `image`
        assert r.json()["detections"] == []
        # A header the gateway accepts over pixels the backend cannot decode: its error, renamed.
        r = gw.post(route, files={field: png_header_only(64, 64)})
        assert f"{field} could not be decoded" in error_message(r, 400)
    else:
        message = error_message(r, 404)
        assert message == f"no face found in {field}" and "Images" not in message


@needs_shared
def test_a_file_path_instead_of_an_image_says_what_was_expected(gw):
    message = error_message(gw.post("/v1/face/embed", json={"img": "/home/me/photo.jpg"}), 400)
    assert "img is neither an http(s) URL, a data: URI nor valid base64" in message
    assert "'/home/me/photo.jpg'" in message and "multipart/form-data" in message


@needs_shared
def test_every_openapi_example_is_a_request_that_works(gw):
    """What Swagger's "Try it out" sends: the example as written, nothing invented. The
    examples' JPEG has no face (no photos in the project), so a face route says exactly that."""
    schema = gw.get("/openapi.json").json()
    tried = 0
    for path, operations in schema["paths"].items():
        body = operations.get("post", {}).get("requestBody", {}).get("content", {})
        if "application/json" not in body:
            continue
        example = body["application/json"]["example"]
        assert "model" not in example and "threshold" not in example, path  # they default
        response = gw.post(path, json=example)
        tried += 1
        if response.status_code == 404:  # no face in it, or no such record: not a bad request
            assert re.search(r"no (face|registered face|person) ", response.text), response.text
        else:
            assert response.status_code in (200, 204), (path, response.text)
    assert tried == 12  # verify analyze embed register identify forget, 2 detections, merge
    # move, cluster, reembed
