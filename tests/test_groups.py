"""Group photos and clustering through a real gateway and backend on the real pack: identify
with all_faces gives each person to one face at most (200 tiled group photos), the optimal
assignment itself, /v1/face/cluster and `face-gateway enroll DIR --cluster`."""
import collections
import shutil
import subprocess
import sys

import httpx
import numpy as np
import pytest

from bench.groups import build_groups, labelled
from gateway.registry.assignment import assign, nearest_each
from gateway_support import gateway_process, write_config
from support import FACES, ROOT, image_b64, needs_shared, read_labels

MODEL = "groups-pack"
GROUP_PHOTOS = 200
POOL = 240  # people of the fixed order the groups are drawn from


def ok(response):
    assert response.status_code == 200, response.text
    return response.json()


def lfw_people(count: int, photos: int) -> list[tuple[str, list]]:
    by_person = collections.defaultdict(list)
    for row in read_labels("lfw_grey"):
        by_person[row["identity"]].append(FACES / "lfw_grey" / row["file"])
    return [(name, sorted(files)[:photos]) for name, files in sorted(by_person.items())
            if len(files) >= photos][:count]


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    write_config(models, MODEL)
    with gateway_process(models, tmp_path_factory.mktemp("data"), "--default-model", MODEL,
                         "--store", "local-store", "--store", "groups") as (_, url), \
            httpx.Client(base_url=url, timeout=120) as client:
        yield url, client


def test_the_assignment_gives_each_person_once_and_leaves_far_faces_unknown():
    inf = np.inf
    # Both faces are nearest person 0; face by face both take it, the assignment cannot.
    distances = np.array([[0.20, 0.45, inf],
                          [0.25, 0.30, inf],
                          [0.90, inf, 0.80]])
    assert nearest_each(distances, 0.5) == [0, 0, None]
    assert assign(distances, 0.5) == [0, 1, None]  # total 0.50, not 0.45 + 0.25
    # The other face is better served by person 0: it goes there, and face 0 takes the next.
    assert assign(np.array([[0.30, 0.40], [0.10, inf]]), 0.5) == [1, 0]
    # Beyond the threshold a free person is still not given: unknown.
    assert assign(np.array([[0.20, 0.70], [0.21, inf]]), 0.5) == [0, None]
    assert assign(np.zeros((2, 0)), 0.5) == [None, None]


@needs_shared
def test_no_person_is_given_to_two_faces_of_a_group_photo(gw):
    _, client = gw
    enrolled, groups = build_groups(GROUP_PHOTOS, POOL)
    shown = {name for g in groups for t in g.tiles if t.enrolled for name in [t.person]}
    person_of = {}
    for name in sorted(shown):
        answer = client.post("/v1/face/register", json={"img": image_b64(enrolled[name]),
                                                       "name": name, "store": "groups"})
        if answer.status_code == 200:  # 404: no face in the enrolment photo
            person_of[answer.json()["person_id"]] = name
    right = scored = 0
    for group in groups:
        answer = ok(client.post("/v1/face/identify", json={
            "img": group.b64, "all_faces": True, "top_k": 5, "store": "groups"}))
        faces = answer["faces"]
        given = [f["person_id"] for f in faces if f["person_id"] is not None]
        assert len(given) == len(set(given)), faces  # nobody twice in one photo
        for f in faces:
            assert f["match"] == (f["person_id"] is not None)
            assert f["matches"] and f["matches"][0]["faces"] == 1
            if f["person_id"] is None:
                assert f["name"] is None
            else:
                assert f["distance"] <= answer["threshold"]
        areas = [tuple(f["facial_area"][k] for k in "xywh") for f in faces]
        for face, tile in zip(labelled(areas, group.tiles), group.tiles):
            if face is not None:
                scored += 1
                truth = tile.person if tile.enrolled and tile.person in person_of.values() \
                    else None
                right += person_of.get(faces[face]["person_id"]) == truth
    assert scored >= 0.9 * sum(len(g.tiles) for g in groups)
    assert right / scored >= 0.9, (right, scored)


@needs_shared
def test_identify_without_all_faces_answers_as_before(gw):
    _, client = gw
    couple = image_b64(FACES / "deepface" / "couple.jpg")
    plain = ok(client.post("/v1/face/identify", json={"img": couple, "store": "groups"}))
    assert "faces" not in plain and plain["matches"]
    every = ok(client.post("/v1/face/identify", json={"img": couple, "store": "groups",
                                                      "all_faces": True}))
    assert len(every["faces"]) >= 2


@needs_shared
def test_cluster_groups_the_faces_of_each_person(gw):
    _, client = gw
    people = lfw_people(4, 3)
    imgs = [image_b64(path) for _, paths in people for path in paths]
    truth = [name for name, paths in people for _ in paths]
    answer = ok(client.post("/v1/face/cluster", json={"imgs": imgs}))
    clusters = answer["clusters"]
    found = {frozenset(f["img"] for f in c["faces"]) for c in clusters}
    assert found == {frozenset(i for i, t in enumerate(truth) if t == name)
                     for name, _ in people}
    for c in clusters:
        assert c["representative"] in c["faces"]
    # LFW photos show people in the background too: faces seen once, each their own.
    assert all(f["facial_area"]["w"] < 100 for f in answer["unclustered"])
    assert answer["threshold"] > 0

    files = [("imgs", (f"{i}.jpg", path.read_bytes(), "image/jpeg"))
             for i, path in enumerate(people[0][1] + people[1][1][:1])]
    form = ok(client.post("/v1/face/cluster", files=files))
    assert [sorted(f["img"] for f in c["faces"]) for c in form["clusters"]] == [[0, 1, 2]]
    assert [f["img"] for f in form["unclustered"]] == [3]

    too_many = client.post("/v1/face/cluster", json={"imgs": imgs * 10})
    assert too_many.status_code == 400 and "imgs" in too_many.text


@needs_shared
def test_enroll_cluster_makes_unknown_people_of_a_flat_folder(gw, tmp_path):
    url, client = gw
    people = lfw_people(3, 4)
    interleaved = [paths[i] for i in range(4) for _, paths in people]
    for i, path in enumerate(interleaved):  # one flat folder: no person's name anywhere
        shutil.copy(path, tmp_path / f"photo-{i:02d}.jpg")
    run = subprocess.run([sys.executable, "-m", "gateway", "enroll", str(tmp_path),
                          "--cluster", "--model", MODEL, "--url", url,
                          "--quality-gate", "off"],  # grouping, not the gate
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "registered 12," in run.stdout
    listing = ok(client.get("/v1/face/people", params={"name": "unknown-"}))["items"]
    assert sorted(p["name"] for p in listing) == ["unknown-1", "unknown-2", "unknown-3"]
    assert sorted(p["faces"] for p in listing) == [4, 4, 4]
    again = subprocess.run([sys.executable, "-m", "gateway", "enroll", str(tmp_path),
                            "--cluster", "--model", MODEL, "--url", url,
                          "--quality-gate", "off"],  # grouping, not the gate
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert "skipped 12" in again.stdout, again.stdout
