"""Two gateway processes on one pgvector store, one real backend behind both: registrations and
forgets are seen across gateways at once; a database outage is a 503 and heals by itself."""
import httpx
import pytest

from gateway_support import gateway_process, write_config
from support import FACES, backend_process, image_b64, needs_shared, read_labels

pytestmark = needs_shared

MODEL = "test-pack"


def two_photos_of_someone():
    by_person = {}
    for row in read_labels("lfw_grey"):
        by_person.setdefault(row["identity"], []).append(FACES / "lfw_grey" / row["file"])
    person, files = next((p, sorted(f)) for p, f in sorted(by_person.items()) if len(f) >= 2)
    return person, image_b64(files[0]), image_b64(files[1])


def ok(response):
    assert response.status_code in (200, 204), response.text
    return response.json() if response.status_code == 200 else None


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, postgres):
    """(gateway one, gateway two) as httpx clients, both on one pgvector store."""
    models = tmp_path_factory.mktemp("models")
    write_config(models, MODEL)
    dsn = postgres.fresh_database()
    with backend_process() as (_, addr):
        args = ["--store", f"shared={dsn}", "--default-store", "shared",
                "--default-model", MODEL, "--backend", f"{MODEL}={addr}"]
        with gateway_process(models, tmp_path_factory.mktemp("one"), *args) as (_, url1), \
                gateway_process(models, tmp_path_factory.mktemp("two"), *args) as (_, url2), \
                httpx.Client(base_url=url1, timeout=60) as one, \
                httpx.Client(base_url=url2, timeout=60) as two:
            yield one, two


def test_a_registration_and_a_forget_are_seen_by_the_other_gateway_at_once(replicas):
    one, two = replicas
    person, first, second = two_photos_of_someone()
    registered = ok(one.post("/v1/face/register", json={"img": first, "name": person}))
    [top] = ok(two.post("/v1/face/identify", json={"img": second, "top_k": 1}))["matches"]
    assert (top["id"], top["name"], top["match"]) == (registered["id"], person, True)
    assert ok(two.get("/v1/face/registry"))["total"] == 1
    ok(two.post("/v1/face/forget", json={"id": registered["id"]}))
    assert ok(one.post("/v1/face/identify", json={"img": second}))["matches"] == []
    assert ok(one.get("/v1/face/registry"))["total"] == 0
    assert one.post("/v1/face/forget", json={"id": registered["id"]}).status_code == 404


def test_the_database_going_away_is_a_503_and_coming_back_needs_no_restart(replicas, postgres):
    one, two = replicas
    person, first, second = two_photos_of_someone()
    postgres.stop()
    try:
        for response in (one.post("/v1/face/register", json={"img": first, "name": person}),
                         two.post("/v1/face/identify", json={"img": second}),
                         two.get("/v1/face/registry")):
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert error["type"] == "unavailable" and "unreachable" in error["message"]
        assert one.get("/healthz").status_code == 200
    finally:
        postgres.start()
    registered = ok(one.post("/v1/face/register", json={"img": first, "name": person}))
    [top] = ok(two.post("/v1/face/identify", json={"img": second, "top_k": 1}))["matches"]
    assert top["id"] == registered["id"]
    ok(one.post("/v1/face/forget", json={"id": registered["id"]}))


def test_merges_and_forgets_of_people_are_seen_by_the_other_gateway_at_once(replicas):
    one, two = replicas
    person, first, second = two_photos_of_someone()
    a = ok(one.post("/v1/face/register", json={"img": first, "name": person}))
    b = ok(one.post("/v1/face/register", json={"img": second, "name": person + " (2)"}))
    merged = ok(two.post("/v1/face/people/merge", json={"into": a["person_id"],
                                                        "from": [b["person_id"]]}))
    assert merged["faces"] == 2
    [top] = ok(one.post("/v1/face/identify", json={"img": second, "top_k": 5,
                                                   "group_by": "person"}))["matches"]
    assert (top["person_id"], top["name"], top["faces"]) == (a["person_id"], person, 2)
    assert one.get(f"/v1/face/people/{b['person_id']}").status_code == 404
    assert two.delete(f"/v1/face/people/{a['person_id']}").status_code == 204
    assert ok(one.post("/v1/face/identify", json={"img": second}))["matches"] == []
    assert ok(one.get("/v1/face/registry"))["people"] == 0
