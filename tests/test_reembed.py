"""Templates bound to their recognizer, rebuilt from kept crops: a model's recognizer swapped
under its name answers 409, and `face-gateway reembed` (with --keep-crops) brings identify back
to the accuracy of a fresh enrolment, on the local store and on real PostgreSQL + pgvector.

The new recognizer is the real one followed by a fixed random rotation of its embedding space:
exactly as accurate, so rank-1 before the swap, after reembed and after a fresh enrolment must
be equal, while its embeddings mean nothing next to the old ones (an old template against a new
query is near chance): a reembed that did not rebuild every template could not pass.
"""
import subprocess
import sys

import httpx
import numpy as np
import pytest

from face_contract.rpc import face_extras_pb2 as xpb
from face_contract.rpc import face_extras_pb2_grpc as xpb_grpc
from gateway_support import gateway_process, write_config
from standins import build_arcface512_standin, build_rotated_recognizer
from support import (FACES, MODELS, REAL_PACK_OPTIONS, ROOT, backend_process, image_b64,
                     load_model, needs_shared, read_labels, stub_for)

pytestmark = needs_shared
MODEL = "swapped-pack"
PEOPLE = 30  # lfw_grey people with 2+ photos: the first enrolled, the second asked
RECOGNIZER = MODELS / "recognizer-mobilefacenet-paddlex" / "MobileFaceNet.onnx"


def labelled_pairs() -> list[tuple[str, str, str]]:
    """(name, enrolment photo, query photo), base64, for PEOPLE people."""
    by_person: dict[str, list] = {}
    for row in read_labels("lfw_grey"):
        by_person.setdefault(row["identity"], []).append(FACES / "lfw_grey" / row["file"])
    pairs = [(name, *sorted(files)[:2]) for name, files in sorted(by_person.items())
             if len(files) >= 2][:PEOPLE]
    return [(name, image_b64(first), image_b64(second)) for name, first, second in pairs]


def ok(response) -> dict | None:
    assert response.status_code in (200, 204), response.text
    return response.json() if response.status_code == 200 else None


def enrol(client, pairs) -> dict[str, str]:
    """person_id -> name of each person registered from their first photo (whatever its
    quality: this measures recognition, not the enrolment gate)."""
    return {ok(client.post("/v1/face/register", json={
        "img": first, "name": name, "quality_gate": "off"}))["person_id"]: name
        for name, first, _ in pairs}


def rank1(client, pairs, people: dict[str, str]) -> tuple[float, list[float]]:
    """Rank-1 of the second photos, and each one's nearest distance."""
    hits, distances = 0, []
    for name, _, second in pairs:
        [top] = ok(client.post("/v1/face/identify", json={"img": second, "top_k": 1}))["matches"]
        hits += people[top["person_id"]] == name
        distances.append(top["distance"])
    return hits / len(pairs), distances


def reembed(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", "reembed", "--url", url,
                           "--batch", "7", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(params=["local", "pgvector"])
def store_args(request) -> list[str]:
    if request.param == "local":
        return []
    dsn = request.getfixturevalue("postgres").fresh_database()
    return ["--store", f"pg={dsn}", "--default-store", "pg"]


def test_reembed_brings_identify_back_to_a_fresh_enrolments_accuracy(tmp_path, store_args):
    pairs = labelled_pairs()
    real, swapped, data = tmp_path / "real", tmp_path / "swapped", tmp_path / "data"
    write_config(real, MODEL)
    rotated = build_rotated_recognizer(RECOGNIZER, tmp_path / "rotated.onnx", seed=7)
    write_config(swapped, MODEL, [o if not o.startswith("recognizer_onnx:")
                                  else f"recognizer_onnx:{rotated}" for o in REAL_PACK_OPTIONS])
    args = ["--default-model", MODEL, "--keep-crops", *store_args]

    with gateway_process(real, data, *args) as (_, url), \
            httpx.Client(base_url=url, timeout=120) as client:
        people = enrol(client, pairs)
        before, before_distances = rank1(client, pairs, people)
        # A template (the mean of several photos) has no one crop to be rebuilt from.
        name, first, second = pairs[0]
        template = ok(client.post("/v1/face/register", json={
            "imgs": [first, second], "template": True, "name": f"{name} (template)",
            "quality_gate": "off"}))

    with gateway_process(swapped, data, *args) as (_, url), \
            httpx.Client(base_url=url, timeout=120) as client:
        answer = client.post("/v1/face/identify", json={"img": pairs[0][2]})
        assert answer.status_code == 409 and "another recognizer" in answer.text

        run = reembed(url)
        assert run.returncode == 1, run.stderr  # one face still needs registering again
        assert f"{PEOPLE}/{PEOPLE} faces" in run.stderr  # the progress
        assert f"re-embedded {PEOPLE} faces of model {MODEL}" in run.stdout
        assert "faces without a kept crop: 1" in run.stdout and template["id"] in run.stdout
        # The face left of the old recognizer is never answered as a match: one that ranks
        # among the top_k makes it a 409.
        every = {"img": second, "top_k": PEOPLE + 1}
        assert client.post("/v1/face/identify", json=every).status_code == 409
        ok(client.delete(f"/v1/face/people/{template['person_id']}"))
        again = reembed(url)  # nothing left: a no-op that says so
        assert again.returncode == 0 and "re-embedded 0 faces" in again.stdout, again.stderr

        after, after_distances = rank1(client, pairs, people)
        for person_id in people:
            ok(client.delete(f"/v1/face/people/{person_id}"))
        fresh, fresh_distances = rank1(client, pairs, enrol(client, pairs))

    print(f"rank-1 on {PEOPLE} lfw_grey people: before the swap {before:.3f}, after reembed "
          f"{after:.3f}, after a fresh enrolment {fresh:.3f}")
    assert before == after == fresh and after >= 0.8
    # A rotation keeps distances; a lossless crop embeds as its photo does.
    assert np.allclose(after_distances, before_distances, atol=2e-4)
    assert np.allclose(after_distances, fresh_distances, atol=2e-4)


def test_an_old_template_against_a_new_query_would_mean_nothing(tmp_path):
    """Why 409 and reembed: the rotated recognizer's embeddings are far from the real one's."""
    rotated = build_rotated_recognizer(RECOGNIZER, tmp_path / "rotated.onnx", seed=7)
    options = [o if not o.startswith("recognizer_onnx:") else f"recognizer_onnx:{rotated}"
               for o in REAL_PACK_OPTIONS]
    name, first, _ = labelled_pairs()[0]
    vectors = []
    for pack in (REAL_PACK_OPTIONS, options):
        with backend_process() as (_, addr):
            stub, channel = stub_for(addr)
            assert load_model(stub, options=pack).success
            face = xpb_grpc.FaceExtrasStub(channel).Faces(
                xpb.FacesRequest(src=first, embeddings=True), timeout=60).faces[0]
            vectors.append(np.asarray(face.embedding))
            channel.close()
    assert 1 - float(vectors[0] @ vectors[1]) > 0.5, name  # same photo, no longer a match


def test_a_recognizer_of_another_size_is_refused_and_changes_nothing(tmp_path):
    real, swapped, data = tmp_path / "real", tmp_path / "swapped", tmp_path / "data"
    write_config(real, MODEL)
    wider = build_arcface512_standin(tmp_path / "wider.onnx")
    write_config(swapped, MODEL, [o if not o.startswith("recognizer_onnx:")
                                  else f"recognizer_onnx:{wider}" for o in REAL_PACK_OPTIONS])
    name, first, _ = labelled_pairs()[0]
    args = ["--default-model", MODEL, "--keep-crops"]
    with gateway_process(real, data, *args) as (_, url), \
            httpx.Client(base_url=url, timeout=120) as client:
        ok(client.post("/v1/face/register", json={"img": first, "name": name,
                                                  "quality_gate": "off"}))
    with gateway_process(swapped, data, *args) as (_, url), \
            httpx.Client(base_url=url, timeout=120) as client:
        answer = client.post("/v1/face/reembed", json={})
        assert answer.status_code == 412, answer.text
        assert "512-d" in answer.text and "new model name" in answer.text
        # Nothing was written: the face is still of the old recognizer, refused again.
        assert client.post("/v1/face/reembed", json={}).status_code == 412
        assert ok(client.get("/v1/face/registry"))["total"] == 1
