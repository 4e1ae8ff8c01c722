"""People through a real gateway and backend on the real pack: a set of photos is one person,
photos added by person_id, identify by person, open-set N counting people, and a model whose
recognizer changed answering 409 instead of distances across two embedding spaces."""
import httpx
import pytest

from gateway_support import gateway_process, write_config
from standins import build_recognizer_standin
from support import FACES, REAL_PACK_OPTIONS, image_b64, needs_shared, read_labels

pytestmark = needs_shared

MODEL = "people-pack"


def photos_by_person(least: int) -> list[tuple[str, list]]:
    """lfw_grey people with at least `least` photos, (name, base64 photos), in name order."""
    by_person = {}
    for row in read_labels("lfw_grey"):
        by_person.setdefault(row["identity"], []).append(FACES / "lfw_grey" / row["file"])
    return [(name, [image_b64(f) for f in sorted(files)[:least]])
            for name, files in sorted(by_person.items()) if len(files) >= least]


def ok(response):
    assert response.status_code in (200, 204), response.text
    return response.json() if response.status_code == 200 else None


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    write_config(models, MODEL)
    data = tmp_path_factory.mktemp("data")
    with gateway_process(models, data, "--default-model", MODEL) as (_, url), \
            httpx.Client(base_url=url, timeout=120) as client:
        yield client


def test_people_are_registered_grown_and_identified_as_people(gw):
    client = gw
    (ann, ann_photos), (bob, bob_photos), (cy, cy_photos) = photos_by_person(5)[:3]
    first = ok(client.post("/v1/face/register", json={"imgs": ann_photos[:3], "name": ann}))
    assert len(first["ids"]) == 3 and first["person_id"]
    added = ok(client.post("/v1/face/register", json={"img": ann_photos[3],
                                                      "person_id": first["person_id"]}))
    assert (added["person_id"], added["name"]) == (first["person_id"], ann)
    other = ok(client.post("/v1/face/register", json={"img": bob_photos[0], "name": bob}))
    assert other["person_id"] != first["person_id"]
    person = ok(client.get(f"/v1/face/people/{first['person_id']}"))
    assert person["faces"] == 4 and {f["id"] for f in person["records"]} == {*first["ids"],
                                                                             added["id"]}
    listing = ok(client.get("/v1/face/registry"))
    assert (listing["total"], listing["people"]) == (5, 2)

    answer = ok(client.post("/v1/face/identify", json={"img": ann_photos[4], "top_k": 5,
                                                       "group_by": "person"}))
    rows = answer["matches"]
    assert [r["person_id"] for r in rows] == [first["person_id"], other["person_id"]]
    assert (rows[0]["name"], rows[0]["faces"], rows[0]["match"]) == (ann, 4, True)
    assert rows[1]["faces"] == 1 and not rows[1]["match"]
    faces = ok(client.post("/v1/face/identify", json={"img": ann_photos[4], "top_k": 5}))
    assert [m["person_id"] for m in faces["matches"]].count(first["person_id"]) == 4

    stranger = ok(client.post("/v1/face/identify", json={"img": cy_photos[0],
                                                         "match_policy": "fpir"}))
    assert stranger["gallery_size"] == 2  # people, not the 5 faces

    missing = client.post("/v1/face/register", json={"img": bob_photos[1], "person_id": "nobody"})
    assert missing.status_code == 404 and "nobody" in missing.json()["error"]["message"]
    nameless = client.post("/v1/face/register", json={"img": bob_photos[1]})
    assert nameless.status_code == 400 and "name is required" in nameless.text
    both = client.post("/v1/face/register", json={"img": bob_photos[1], "name": "x",
                                                  "person_id": other["person_id"]})
    assert both.status_code == 400 and "not both" in both.text
    assert ok(client.get("/v1/face/registry"))["total"] == 5  # neither stored anything

    for person_id in (first["person_id"], other["person_id"]):
        assert client.delete(f"/v1/face/people/{person_id}").status_code == 204


def test_a_changed_recognizer_is_a_409_not_a_distance(tmp_path):
    (name, photos), = photos_by_person(2)[3:4]
    real, swapped, data = tmp_path / "real", tmp_path / "swapped", tmp_path / "data"
    write_config(real, MODEL)
    # Same model name, same 128-d output, another network: a stand-in with MobileFaceNet's
    # signature.
    other = build_recognizer_standin(tmp_path / "other.onnx", 128, "x", "reshape2_0.tmp_0",
                                     batch="N", seed=3)
    write_config(swapped, MODEL, [o if not o.startswith("recognizer_onnx:")
                                  else f"recognizer_onnx:{other}" for o in REAL_PACK_OPTIONS])
    with gateway_process(real, data, "--default-model", MODEL) as (_, url), \
            httpx.Client(base_url=url, timeout=120) as before:
        registered = ok(before.post("/v1/face/register", json={"img": photos[0], "name": name}))
    with gateway_process(swapped, data, "--default-model", MODEL) as (_, url), \
            httpx.Client(base_url=url, timeout=120) as after:
        for route, body in (("identify", {"img": photos[1]}),
                            ("identify", {"img": photos[1], "group_by": "person"}),
                            ("register", {"img": photos[1], "name": name})):
            answer = after.post(f"/v1/face/{route}", json=body)
            assert answer.status_code == 409, answer.text
            error = answer.json()["error"]
            assert error["type"] == "conflict" and "another recognizer" in error["message"]
            assert "register them again" in error["message"]  # the remedy
        assert ok(after.get("/v1/face/registry"))["total"] == 1  # nothing mixed in
        ok(after.delete(f"/v1/face/people/{registered['person_id']}"))
        fresh = ok(after.post("/v1/face/register", json={"img": photos[0], "name": name}))
        [top] = ok(after.post("/v1/face/identify", json={"img": photos[0], "top_k": 1}))["matches"]
        assert top["id"] == fresh["id"]
