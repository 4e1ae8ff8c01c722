"""The HTTP surface that needs no face model: errors, validation, model/store choice,
registry listing, forget, metrics and docs. The app runs under uvicorn in this process."""
import base64

import httpx
import numpy as np
import pytest

from gateway.app import create_app
from gateway.settings import Settings
from gateway.registry import LocalStore, Record
from gateway_support import app_server, png_header_only, write_config
from support import free_port

# A port nothing listens on: the external backend of model `down` is unreachable.
DOWN = f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """Two stores' worth of records written before the gateway starts."""
    data = tmp_path_factory.mktemp("data")
    store = LocalStore(data / "local-store.sqlite3")
    records = []
    for i, (name, model) in enumerate([("ann", "alpha"), ("bob", "alpha"), ("ann", "beta"),
                                       ("cy", "alpha"), ("dee", "beta")]):
        rec = Record.new(name, {"n": str(i)}, model, np.eye(4)[i % 4] + 0.1)
        rec.registered_at = f"2025-01-0{1 + i // 2}T00:00:00.000Z"
        store.add(rec)
        records.append(rec)
    store.close()
    archive = LocalStore(data / "archive.sqlite3")
    archived = Record.new("zed", {}, "alpha", np.ones(4))
    archive.add(archived)
    archive.close()
    return data, sorted(records, key=lambda r: (r.registered_at, r.id)), archived


@pytest.fixture(scope="module")
def api(tmp_path_factory, seeded):
    models = tmp_path_factory.mktemp("models")
    write_config(models, "alpha")
    write_config(models, "beta")
    app = create_app(Settings(models_dir=models, data_dir=seeded[0], max_body_bytes=100_000,
                              stores=("local-store", "archive"),
                              external_backends={"down": DOWN}))
    with app_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def error_of(response, status, *words):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "type"}
    assert body["error"]["code"] == status
    for word in words:
        assert word in body["error"]["message"], body
    return body["error"]


def test_unknown_routes_and_methods_answer_json_errors(api):
    assert error_of(api.get("/v1/nothing"), 404, "/v1/nothing")["type"] == "not_found"
    assert error_of(api.get("/v1/face/verify"), 405, "GET")["type"] == "invalid_request"


def test_missing_and_mistyped_fields_are_400_naming_the_field(api):
    err = error_of(api.post("/v1/face/verify", json={"model": "alpha", "img1": "x"}), 400, "img2")
    assert err["type"] == "invalid_request" and "img1" not in err["message"]
    error_of(api.post("/v1/face/register", json={"model": "alpha", "img": "x"}), 400, "name")
    error_of(api.post("/v1/face/register", json={"img": "x", "name": "  "}), 400, "name")
    error_of(api.post("/v1/face/identify", json={"img": "x", "top_k": "many"}), 400, "top_k")
    error_of(api.post("/v1/face/identify", json={"img": "x", "top_k": 0}), 400, "top_k")
    error_of(api.post("/v1/face/verify", json={"img1": "a", "img2": "b", "threshold": -1}),
             400, "threshold")
    for too_far in (2.5, 1e300):  # a float32 inf would come back as a null threshold
        error_of(api.post("/v1/face/identify", json={"img": "x", "threshold": too_far}),
                 400, "threshold")
    error_of(api.post("/v1/face/verify", content=b'{"img1": "a", "img2": "b", "threshold": NaN}',
                      headers={"content-type": "application/json"}), 400, "threshold")
    error_of(api.post("/v1/detection", json={"img": "x"}), 400, "image")  # `image`, not `img`
    error_of(api.post("/v1/face/forget", json={}), 400, "id")
    error_of(api.post("/v1/face/embed", content=b"{not json", headers={
        "content-type": "application/json"}), 400, "malformed JSON")
    error_of(api.post("/v1/face/embed", json=["a list"]), 400, "body must be a JSON object")
    error_of(api.post("/v1/face/forget", content=b'{"id": "x"}', headers={
        "content-type": "text/plain"}), 400, "Content-Type: application/json")


def test_labels_are_bounded(api):
    many = {f"k{i}": "v" for i in range(33)}
    error_of(api.post("/v1/face/register", json={"img": "x", "name": "n", "labels": many}),
             400, "labels", "at most 32")
    error_of(api.post("/v1/face/register", json={"img": "x", "name": "n",
                                                 "labels": {"k": "v" * 257}}), 400, "labels")
    error_of(api.post("/v1/face/register", json={"img": "x", "name": "n",
                                                 "labels": {"k": 5}}), 400, "labels.k")


def test_model_is_required_when_several_are_installed(api):
    error_of(api.post("/v1/face/embed", json={"img": "aGVsbG8="}), 400, "model is required")


def test_unknown_model_is_404_naming_it(api):
    err = error_of(api.post("/v1/face/embed", json={"model": "gamma", "img": "aGVsbG8="}),
                   404, "'gamma'", "alpha")
    assert err["type"] == "not_found"


def test_unknown_store_is_400(api):
    error_of(api.post("/v1/face/identify", json={"model": "alpha", "img": "x", "store": "vault"}),
             400, "unknown store 'vault'", "local-store")
    error_of(api.get("/v1/face/registry", params={"store": "vault"}), 400, "vault")


def test_bad_base64_is_400_before_any_backend(api):
    error_of(api.post("/v1/face/embed", json={"model": "alpha", "img": ""}), 400, "img is empty")
    models = api.get("/v1/models").json()["data"]
    assert not any(m.get("pid") for m in models)  # no backend was started for bad input


def test_unreachable_backend_is_503_quickly(api):
    header_only = base64.b64encode(png_header_only(32, 32)).decode()  # passes the gateway's checks
    err = error_of(api.post("/v1/face/embed", json={"model": "down", "img": header_only}),
                   503, "'down'", "unavailable")
    assert err["type"] == "unavailable"
    ready = api.get("/readyz")
    error_of(ready, 503, "down")


def test_models_lists_installed_and_external(api):
    body = api.get("/v1/models").json()
    assert body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    assert set(by_id) == {"alpha", "beta", "down"}
    assert by_id["alpha"] == {"id": "alpha", "object": "model", "loaded": False}
    assert by_id["down"]["address"] == DOWN and by_id["down"]["loaded"] is False


def test_registry_listing_order_filters_and_paging(api, seeded):
    _, records, _ = seeded
    body = api.get("/v1/face/registry").json()
    assert body["total"] == 5 and body["people"] == 5
    assert [i["id"] for i in body["items"]] == [r.id for r in records]
    first = body["items"][0]
    assert first == {"id": records[0].id, "name": records[0].name, "labels": records[0].labels,
                     "model": records[0].model, "registered_at": records[0].registered_at,
                     "person_id": records[0].person_id}  # never the embedding
    page = api.get("/v1/face/registry", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 5 and [i["id"] for i in page["items"]] == [r.id for r in records[1:3]]
    alpha = api.get("/v1/face/registry", params={"model": "alpha"}).json()
    assert alpha["total"] == 3 and {i["model"] for i in alpha["items"]} == {"alpha"}
    ann = api.get("/v1/face/registry", params={"name": "ann", "model": "beta"}).json()
    assert ann["total"] == 1 and ann["people"] == 1 and ann["items"][0]["name"] == "ann"
    archive = api.get("/v1/face/registry", params={"store": "archive"}).json()
    assert archive["total"] == 1 and archive["items"][0]["name"] == "zed"
    error_of(api.get("/v1/face/registry", params={"limit": 1001}), 400, "limit")
    error_of(api.get("/v1/face/registry", params={"offset": -1}), 400, "offset")
    error_of(api.get("/v1/face/registry", params={"offset": 2**31}), 400, "offset")
    error_of(api.get("/v1/face/registry?model=alpha&model=beta"), 400, "model", "more than once")


def test_forget_is_204_then_404(api, seeded):
    victim = seeded[2].id
    error_of(api.post("/v1/face/forget", json={"id": victim}), 404, victim)  # other store
    response = api.post("/v1/face/forget", json={"id": victim, "store": "archive"})
    assert response.status_code == 204 and response.content == b""
    error_of(api.post("/v1/face/forget", json={"id": victim, "store": "archive"}), 404, victim)
    assert api.get("/v1/face/registry", params={"store": "archive"}).json()["total"] == 0
    assert api.get("/v1/face/registry").json()["total"] == 5


def test_metrics_count_requests_errors_and_registry(api):
    api.get("/healthz")
    api.get("/v1/nowhere")
    # a multipart upload is counted under its route (the form is converted to JSON first)
    upload = api.post("/v1/face/embed", files={"img": ("a.jpg", b"not an image")},
                      data={"model": "alpha"})
    text = api.get("/metrics").text
    assert (f'face_gateway_requests_total{{code="{upload.status_code}",method="POST",'
            'route="/v1/face/embed"}') in text
    assert 'face_gateway_requests_total{code="200",method="GET",route="/healthz"}' in text
    assert 'face_gateway_errors_total{code="404",type="not_found"}' in text
    assert ('face_gateway_request_duration_seconds_bucket'
            '{le="0.005",method="GET",route="/healthz"}') in text
    assert 'face_gateway_registry_records{model="alpha",store="local-store"}' in text


def test_register_takes_exactly_one_of_img_and_imgs(api):
    for body in ({"name": "x"}, {"name": "x", "img": "a", "imgs": ["b"]}):
        error_of(api.post("/v1/face/register", json={"model": "alpha", **body}), 400,
                 "exactly one of img", "imgs")
    error_of(api.post("/v1/face/register", json={"model": "alpha", "name": "x", "imgs": []}),
             400, "imgs")
    error_of(api.post("/v1/face/register", json={"model": "alpha", "name": "x",
                                                 "imgs": ["a"] * 33}), 400, "imgs")


def test_health_and_openapi_docs(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    spec = api.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"VerifyRequest", "VerifyResponse", "IdentifyResponse", "ErrorResponse"} <= set(schemas)
    assert "required" not in schemas["RegisterRequest"]  # one of img / imgs; name or person_id
    assert {"img", "imgs", "template"} <= set(schemas["RegisterRequest"]["properties"])
    assert api.get("/docs").status_code == 200


def raw_post(api, route: str, text: str):
    """A JSON body sent as written: escapes like \\ud800 reach the gateway's parser."""
    return api.post(route, content=text.encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize("route, body, field", [
    ("/v1/face/register", '{"img": "x", "name": "a\\ud800b"}', "name"),
    ("/v1/face/register", '{"img": "x", "name": "a", "labels": {"k": "\\udfff"}}', "labels.k"),
    ("/v1/face/register", '{"img": "x", "name": "a", "labels": {"\\ud800": "v"}}',
     "labels.\\ud800"),  # the key, escaped
    ("/v1/face/embed", '{"img": "\\ud83d"}', "img"),
    ("/v1/face/embed", '{"img": "x", "model": "\\ud800"}', "model"),
    ("/v1/face/identify", '{"img": "x", "store": "\\ud800"}', "store"),
    ("/v1/face/forget", '{"id": "\\udc00"}', "id"),
    ("/v1/face/analyze", '{"img": "x", "actions": ["age", "\\ud800"]}', "actions.1"),
])
def test_lone_surrogates_are_400_naming_the_field(api, route, body, field):
    error_of(raw_post(api, route, body), 400, f"{field}: is not valid UTF-8")


def test_undecodable_and_deeply_nested_bodies_are_400(api):
    error_of(api.post("/v1/face/forget", content=b'{"id": "\xff\xfe"}',
                      headers={"content-type": "application/json"}), 400, "malformed JSON")
    error_of(raw_post(api, "/v1/face/forget", "[" * 5_000), 400, "malformed JSON", "recursion")
    # Past the cap on values, refused before the parser starts
    error_of(raw_post(api, "/v1/face/forget", "[" * 50_000), 400, "malformed JSON",
             "50000 ',', '[' and '{' characters")


def test_valid_non_ascii_text_is_accepted(api):
    error_of(raw_post(api, "/v1/face/forget", '{"id": "\\ud83d\\ude00 caf\\u00e9"}'), 404, "café")


@pytest.mark.parametrize("route, body, field", [
    ("/v1/face/verify", '{"img1": "a", "img2": "b", "threshold": NaN}', "threshold"),
    ("/v1/face/verify", '{"img1": "a", "img2": "b", "threshold": Infinity}', "threshold"),
    ("/v1/face/verify", '{"img1": "a", "img2": "b", "threshold": 1e400}', "threshold"),
    ("/v1/face/verify", '{"img1": "a", "img2": "b", "threshold": -0.0001}', "threshold"),
    ("/v1/face/verify", '{"img1": "a", "img2": "b", "threshold": 2.5}', "threshold"),
    ("/v1/face/identify", '{"img": "a", "threshold": -0.1}', "threshold"),
    ("/v1/face/identify", '{"img": "a", "top_k": 1001}', "top_k"),
    ("/v1/face/identify", '{"img": "a", "top_k": 18446744073709551617}', "top_k"),
    ("/v1/detection", '{"image": "a", "threshold": 1.5}', "threshold"),
    ("/v1/detection", '{"image": "a", "threshold": NaN}', "threshold"),
    ("/v1/detection", '{"image": "a", "max_faces": 0}', "max_faces"),
    ("/v1/detection", '{"image": "a", "max_faces": 1001}', "max_faces"),
    ("/v1/face/analyze", '{"img": "a", "actions": ["age","age","age","age","age","age","age",'
                         '"age","age"]}', "actions"),
    ("/v1/face/analyze", '{"img": "a", "actions": ["' + "a" * 33 + '"]}', "actions.0"),
    ("/v1/face/forget", '{"id": "' + "i" * 257 + '"}', "id"),
    ("/v1/face/embed", '{"img": "a", "model": "' + "m" * 257 + '"}', "model"),
])
def test_numbers_and_lists_out_of_range_are_400(api, route, body, field):
    error_of(raw_post(api, route, body), 400, f"{field}:")


@pytest.mark.parametrize("params, field", [
    ({"offset": 2**31}, "offset"), ({"offset": -1}, "offset"), ({"limit": 0}, "limit"),
    ({"limit": 1001}, "limit"), ({"limit": "1e3"}, "limit"), ({"name": "n" * 257}, "name"),
    ({"model": "m" * 257}, "model"),
])
def test_registry_query_out_of_range_is_400(api, params, field):
    error_of(api.get("/v1/face/registry", params=params), 400, f"{field}:")


def test_largest_offset_is_an_empty_page_not_an_error(api):
    page = api.get("/v1/face/registry", params={"offset": 2**31 - 1}).json()
    assert page["items"] == [] and page["total"] == 5


def test_validation_errors_are_summarised_not_echoed(api):
    bad = api.post("/v1/face/register", json={
        "img": ["x" * 15_000] * 3, "name": 7, "model": ["y" * 15_000], "store": 1,
        "labels": {"z" * 15_000: 1, "b": 2, "c": 3}})
    message = error_of(bad, 400, "img", "and 2 more problems (7 in all)")
    assert len(message) < 1500 and "z" * 300 not in message
    actions = api.post("/v1/face/analyze", json={"img": "a", "actions": list(range(8))})
    assert error_of(actions, 400, "actions.0", "and 3 more problems (8 in all)")


def test_people_routes(tmp_path):
    """List, show, rename, merge, split and forget people (the store suite covers the stores)."""
    store = LocalStore(tmp_path / "data" / "local-store.sqlite3")
    ann = [Record.new("ann", {"n": str(i)}, "alpha", np.eye(4)[i] + 0.1, person_id="p-ann")
           for i in range(2)]
    store.add_set(ann, existing=False)
    anne = Record.new("anne", {}, "alpha", np.eye(4)[2] + 0.1)
    store.add(anne)
    bob = Record.new("bob", {}, "beta", np.eye(4)[3] + 0.1)
    store.add(bob)
    store.close()
    write_config(tmp_path / "models", "alpha")
    app = create_app(Settings(models_dir=tmp_path / "models", data_dir=tmp_path / "data"))
    with app_server(app) as url, httpx.Client(base_url=url, timeout=30) as api:
        listing = api.get("/v1/face/people", params={"name": "ann"}).json()
        assert listing["total"] == 2
        assert [(p["name"], p["faces"]) for p in listing["items"]] == [("ann", 2), ("anne", 1)]
        assert api.get("/v1/face/people", params={"model": "beta"}).json()["total"] == 1
        detail = api.get("/v1/face/people/p-ann").json()
        assert [f["id"] for f in detail["records"]] == \
            [r.id for r in sorted(ann, key=lambda r: (r.registered_at, r.id))]
        assert {f["labels"]["n"] for f in detail["records"]} == {"0", "1"}
        error_of(api.get("/v1/face/people/nobody"), 404, "nobody")

        renamed = api.patch("/v1/face/people/p-ann", json={"name": "Ann Lee", "labels": {"t": "x"}})
        assert renamed.status_code == 200, renamed.text
        assert (renamed.json()["name"], renamed.json()["labels"]) == ("Ann Lee", {"t": "x"})
        assert api.get("/v1/face/registry", params={"name": "Ann Lee"}).json()["total"] == 2
        error_of(api.patch("/v1/face/people/p-ann", json={"name": " "}), 400, "name")
        error_of(api.patch("/v1/face/people/nobody", json={"name": "x"}), 404, "nobody")

        error_of(api.post("/v1/face/people/merge", json={"into": "p-ann", "from": [bob.person_id]}),
                 400, "one model")
        error_of(api.post("/v1/face/people/merge", json={"into": "p-ann", "from": []}), 400, "from")
        merged = api.post("/v1/face/people/merge", json={"into": "p-ann",
                                                         "from": [anne.person_id]}).json()
        assert merged["faces"] == 3
        error_of(api.get(f"/v1/face/people/{anne.person_id}"), 404)

        split = api.post("/v1/face/people/move", json={"face_id": anne.id}).json()
        assert split["faces"] == 1 and split["name"] == "Ann Lee"
        assert api.get("/v1/face/registry").json()["people"] == 3
        error_of(api.post("/v1/face/people/move", json={"face_id": anne.id, "person_id": "nobody"}),
                 404, "nobody")

        assert api.delete("/v1/face/people/p-ann").status_code == 204
        error_of(api.delete("/v1/face/people/p-ann"), 404, "p-ann")
        assert api.get("/v1/face/registry").json()["total"] == 2
        assert api.post("/v1/face/forget", json={"id": anne.id}).status_code == 204
        assert api.get("/v1/face/people").json()["total"] == 1  # the person went with its face
