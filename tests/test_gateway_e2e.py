"""The gateway as users run it: `python -m gateway` processes driving real backends on the real
test pack. One gateway (with the backend it starts) serves the module; the restart test runs
its own gateways against a backend it starts itself."""
import base64
import collections
import concurrent.futures
import json
import os
import signal
import socket
import time

import grpc
import httpx
import pytest

from face_contract.rpc import backend_pb2 as pb
from gateway_support import (gateway_process, image_server, png_header_only, wait_gone,
                             write_config)
from support import FACES, backend_process, needs_shared, read_labels, stub_for

pytestmark = needs_shared

MODEL = "test-pack"
BODY_LIMIT = 2_000_000
TOKEN = "e2e-secret"
LIVE = FACES / "silent_face" / "image_T1.jpg"  # a real face large enough for liveness


def b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def lfw_people() -> dict[str, list]:
    people = collections.defaultdict(list)
    for row in read_labels("lfw_grey"):
        people[row["identity"]].append(FACES / "lfw_grey" / row["file"])
    return {name: sorted(files) for name, files in sorted(people.items())}


SAMPLE = next(files[0] for files in lfw_people().values() if len(files) >= 2) \
    if (FACES / "lfw_grey" / "labels.csv").exists() else None


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    write_config(models, MODEL)
    data = tmp_path_factory.mktemp("data")
    with gateway_process(models, data, "--max-body-bytes", str(BODY_LIMIT),
                         "--backend-timeout", "20",
                         env={"LOCALAI_GRPC_AUTH_TOKEN": TOKEN}) as (_, url), \
            httpx.Client(base_url=url, timeout=60) as client:
        yield client


def test_default_model_is_loaded_before_the_first_request(gw):
    """Runs first in this module: no face request has been sent yet."""
    deadline = time.monotonic() + 60
    while (ready := gw.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
        assert "loading" in ready.json()["error"]["message"]
        time.sleep(0.2)
    assert ready.json()["backends"] == {MODEL: "ok"}
    model = next(m for m in gw.get("/v1/models").json()["data"] if m["id"] == MODEL)
    assert model["loaded"] and model["pid"] > 0


# -- PROTOCOL section 2, field for field (plus each face's quality, issue 18) -------------------

AREA = {"x": float, "y": float, "w": float, "h": float}
QUALITY = {"score": float, "components": dict, "reasons": list}
VERIFY = {"verified": bool, "distance": float, "threshold": float, "confidence": float,
          "model": str, "img1_area": AREA, "img2_area": AREA, "processing_time_ms": float,
          "img1_quality": QUALITY, "img2_quality": QUALITY}
LIVENESS = {"img1_is_real": bool, "img1_antispoof_score": float,
            "img2_is_real": bool, "img2_antispoof_score": float}
FACE = {"region": AREA, "face_confidence": float, "age": float, "dominant_gender": str,
        "gender": {"Woman": float, "Man": float}, "quality": QUALITY}
DETECTION = {"x": float, "y": float, "width": float, "height": float, "class_name": str,
             "confidence": float, "quality": QUALITY}
MATCH = {"id": str, "name": str, "labels": dict, "distance": float, "confidence": float,
         "match": bool, "person_id": str}
ITEM = {"id": str, "name": str, "labels": dict, "model": str, "registered_at": str,
        "person_id": str}


def assert_shape(value, shape, where="body"):
    """Exactly the fields of `shape` (no more, none missing), each of the given JSON type."""
    if isinstance(shape, dict):
        assert isinstance(value, dict), f"{where}: {value!r} is not an object"
        assert set(value) == set(shape), f"{where}: fields {sorted(value)} != {sorted(shape)}"
        for key, sub in shape.items():
            assert_shape(value[key], sub, f"{where}.{key}")
    elif isinstance(shape, list):
        assert isinstance(value, list) and value, f"{where}: expected a non-empty list"
        for i, item in enumerate(value):
            assert_shape(item, shape[0], f"{where}[{i}]")
    else:
        assert type(value) is shape, f"{where}: {value!r} is not {shape.__name__}"


def ok(response, status=200):
    assert response.status_code == status, response.text
    return response.json() if status != 204 else None


def model_info(client, name) -> dict:
    return next(m for m in ok(client.get("/v1/models"))["data"] if m["id"] == name)


def test_route_json_matches_protocol(gw):
    img, live = b64(SAMPLE), b64(LIVE)
    assert_shape(ok(gw.post("/v1/face/verify", json={"img1": img, "img2": img})), VERIFY)
    assert_shape(ok(gw.post("/v1/face/verify", json={"img1": live, "img2": live,
                                                     "anti_spoofing": True})),
                 {**VERIFY, **LIVENESS})
    assert_shape(ok(gw.post("/v1/face/analyze", json={"img": img})), {"faces": [FACE]})
    assert_shape(ok(gw.post("/v1/face/analyze", json={"img": img, "actions": ["age"]})),
                 {"faces": [{"region": AREA, "face_confidence": float, "age": float,
                             "quality": QUALITY}]})
    assert_shape(ok(gw.post("/v1/face/analyze", json={"img": live, "anti_spoofing": True})),
                 {"faces": [{**FACE, "is_real": bool, "antispoof_score": float}]})
    embed = ok(gw.post("/v1/face/embed", json={"img": img}))
    assert_shape(embed, {"embedding": list, "dim": int, "model": str})
    assert embed["dim"] == len(embed["embedding"]) == 128 and embed["model"] == MODEL
    assert sum(v * v for v in embed["embedding"]) == pytest.approx(1.0, abs=1e-4)
    assert_shape(ok(gw.post("/v1/detection", json={"image": img})), {"detections": [DETECTION]})
    reg = ok(gw.post("/v1/face/register", json={"img": img, "name": "shape-check",
                                                "labels": {"role": "schema"}}))
    assert_shape(reg, {"id": str, "name": str, "registered_at": str, "person_id": str,
                       "quality": [QUALITY]})
    assert_shape(ok(gw.post("/v1/face/identify", json={"img": img, "top_k": 1})),
                 {"matches": [MATCH], "threshold": float, "match_policy": str,
                  "threshold_source": str, "quality": QUALITY})
    assert_shape(ok(gw.post("/v1/face/identify", json={"img": img, "top_k": 1,
                                                       "match_policy": "fpir"})),
                 {"matches": [MATCH], "threshold": float, "match_policy": str,
                  "threshold_source": str, "fpir": float, "gallery_size": int,
                  "quality": QUALITY})
    listing = ok(gw.get("/v1/face/registry", params={"name": "shape-check"}))
    assert_shape(listing, {"items": [ITEM], "total": int, "people": int})
    assert_shape(ok(gw.post("/v1/face/identify", json={"img": img, "group_by": "person"})),
                 {"matches": [{**MATCH, "faces": int}], "threshold": float, "match_policy": str,
                  "threshold_source": str, "quality": QUALITY})
    assert_shape(ok(gw.get(f"/v1/face/people/{reg['person_id']}")),
                 {"person_id": str, "name": str, "labels": dict, "model": str,
                  "created_at": str, "faces": int,
                  "records": [{"id": str, "labels": dict, "registered_at": str}]})
    ok(gw.post("/v1/face/forget", json={"id": reg["id"]}), 204)


def test_verify_and_detection_values(gw):
    people = lfw_people()
    name = next(n for n, files in people.items() if len(files) >= 2)
    same = ok(gw.post("/v1/face/verify", json={"img1": b64(people[name][0]),
                                               "img2": b64(people[name][1])}))
    assert same["threshold"] == 0.74 and same["model"] == MODEL
    assert 0 <= same["confidence"] <= 100
    assert "img1_is_real" not in same  # liveness not asked: left out
    dets = ok(gw.post("/v1/detection", json={"image": b64(FACES / "deepface" / "couple.jpg")}))
    assert len(dets["detections"]) >= 2
    assert {d["class_name"] for d in dets["detections"]} == {"face"}


def test_three_image_encodings_and_loopback_url_refused(gw):
    raw = SAMPLE.read_bytes()
    bare = ok(gw.post("/v1/face/embed", json={"img": base64.b64encode(raw).decode()}))
    data_uri = ok(gw.post("/v1/face/embed", json={
        "img": "data:image/jpeg;base64," + base64.b64encode(raw).decode()}))
    assert bare["embedding"] == data_uri["embedding"]
    with image_server({"face.jpg": raw}) as server:
        response = gw.post("/v1/face/embed", json={"img": f"{server.url}/face.jpg"})
        assert response.status_code == 400
        assert "loopback" in response.json()["error"]["message"]
        assert server.hits == []  # refused before connecting


def test_body_limit_413_from_content_length_and_while_reading(gw):
    host, port = gw.base_url.host, gw.base_url.port
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"POST /v1/face/embed HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 900000000\r\n\r\n")
        answer = b""
        while b"}}" not in answer:  # the whole JSON error body, sent without reading ours
            piece = sock.recv(65536)
            assert piece, f"connection closed after {answer!r}"
            answer += piece
    head, _, body = answer.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413"), head
    assert json.loads(body) == {"error": {
        "code": 413, "type": "payload_too_large",
        "message": "request body is 900000000 bytes, over the 2000000 byte limit"}}

    def chunks():  # chunked upload: no Content-Length, the limit is met while reading
        yield b'{"img": "'
        for _ in range(40):
            yield b"A" * 65536

    response = gw.post("/v1/face/embed", content=chunks(),
                       headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["message"] == \
        "request body is more than 2000000 bytes, over the 2000000 byte limit"


def test_pixel_limit_is_400_with_the_size(gw):
    huge = base64.b64encode(png_header_only(9000, 5000)).decode()
    response = gw.post("/v1/face/embed", json={"img": huge})
    assert response.status_code == 400
    assert "9000x5000 pixels, over the 40000000 pixel limit" in response.json()["error"]["message"]


def test_identification_accuracy_on_lfw(gw):
    people = lfw_people()
    known = [n for n, files in people.items() if len(files) >= 2][:50]
    strangers = [n for n, files in people.items() if len(files) == 1][:50]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        regs = list(pool.map(lambda n: ok(gw.post("/v1/face/register", json={
            "img": b64(people[n][0]), "name": n, "labels": {"set": "lfw"},
            "quality_gate": "off"})), known))  # accuracy of recognition, not of the gate
        answers = list(pool.map(lambda n: ok(gw.post("/v1/face/identify", json={
            "img": b64(people[n][1])})), known))
        stranger_answers = list(pool.map(lambda n: ok(gw.post("/v1/face/identify", json={
            "img": b64(people[n][0])})), strangers))
    probes = [a["matches"] for a in answers]
    stranger_probes = [a["matches"] for a in stranger_answers]
    # No threshold asked for: the pack's calibrated identify threshold, stricter than verify's.
    threshold = answers[0]["threshold"]
    assert threshold < 0.74 and answers[0]["threshold_source"] == "calibration"
    assert [r["name"] for r in regs] == known
    hits = sum(bool(m) and m[0]["name"] == n for n, m in zip(known, probes))
    rank1 = hits / len(known)
    false_match = sum(any(x["match"] for x in m) for m in stranger_probes) / len(strangers)
    print(f"\nrank-1 accuracy {rank1:.1%} ({hits}/{len(known)} identities); unregistered "
          f"people with a match at the default threshold: {false_match:.1%} of {len(strangers)}")
    for matches in probes + stranger_probes:
        assert len(matches) == 5
        distances = [m["distance"] for m in matches]
        assert distances == sorted(distances)
        for m in matches:
            assert m["match"] == (m["distance"] <= threshold)
            assert m["confidence"] == pytest.approx(
                min(max((1 - m["distance"] / threshold) * 100, 0), 100), abs=1e-4)
    assert rank1 >= 0.9
    assert false_match < 0.5
    # An explicit threshold replaces the model's, and top_k bounds the list.
    strict = ok(gw.post("/v1/face/identify", json={"img": b64(people[known[0]][1]),
                                                   "threshold": 0.0001, "top_k": 2}))["matches"]
    assert len(strict) == 2 and not any(m["match"] for m in strict)
    listed = ok(gw.get("/v1/face/registry", params={"limit": 1000}))
    assert {i["name"] for i in listed["items"]} >= set(known)
    assert ok(gw.get("/v1/face/registry", params={"name": known[3]}))["items"][0]["labels"] == \
        {"set": "lfw"}


def test_backend_killed_midway_requests_get_503_or_succeed(gw):
    before = ok(gw.get("/v1/face/registry"))["total"]
    assert before > 0
    [model] = ok(gw.get("/v1/models"))["data"]
    assert model["loaded"] is True
    old_pid = model["pid"]
    img = b64(SAMPLE)
    killed_at, window = time.monotonic() + 0.5, 4.0

    def worker():  # identify in a loop across the kill and the restart
        statuses = []
        while time.monotonic() < killed_at + window:
            # A client timeout raises and fails the test: a request must never hang.
            statuses.append(gw.post("/v1/face/identify", json={"img": img}, timeout=45).status_code)
        return statuses

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(worker) for _ in range(3)]
        time.sleep(max(0.0, killed_at - time.monotonic()))
        os.kill(old_pid, signal.SIGKILL)
        per_worker = [f.result() for f in futures]
    print(f"\nstatuses across the backend kill, per client: "
          f"{[dict(collections.Counter(statuses)) for statuses in per_worker]}")
    assert all(set(statuses) <= {200, 503} for statuses in per_worker)
    assert all(statuses[-1] == 200 for statuses in per_worker)  # later requests succeed
    [model] = ok(gw.get("/v1/models"))["data"]
    assert model["pid"] != old_pid and model["loaded"] is True
    assert ok(gw.get("/v1/face/registry"))["total"] == before
    assert ok(gw.get("/readyz"))["backends"] == {MODEL: "ok"}
    metrics = gw.get("/metrics").text
    assert f'face_gateway_backend_starts_total{{model="{MODEL}"}} 2.0' in metrics


# -- durability: SIGKILL the gateway -----------------------------------------------------------

def test_registrations_survive_sigkill_and_forget(tmp_path):
    models, data = tmp_path / "models", tmp_path / "data"
    write_config(models, MODEL)
    write_config(models, "ext")  # served by a backend the gateways do not own
    people = lfw_people()
    names = [n for n, files in people.items() if len(files) >= 2][50:56]
    env = {"LOCALAI_GRPC_AUTH_TOKEN": TOKEN, "FACE_ALLOW_PRIVATE_URLS": "1"}
    with backend_process(env={"LOCALAI_GRPC_AUTH_TOKEN": TOKEN}) as (external, addr), \
            image_server({"first.jpg": people[names[0]][0].read_bytes()}) as server:
        stub, channel = stub_for(addr)
        with pytest.raises(grpc.RpcError) as denied:  # the token the gateways must send
            stub.Health(pb.HealthMessage(), timeout=10)
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        channel.close()
        args = ["--default-model", MODEL, "--backend", f"ext={addr}"]
        with gateway_process(models, data, *args, env=env) as (proc, url), \
                httpx.Client(base_url=url, timeout=60) as client:
            # Private URLs allowed by configuration (env): the loopback image server is fetched.
            first = ok(client.post("/v1/face/register", json={
                "img": f"{server.url}/first.jpg", "name": names[0]}))
            assert server.hits == ["/first.jpg"]
            registered = [first] + [ok(client.post("/v1/face/register", json={
                "img": b64(people[n][0]), "name": n, "labels": {"i": str(i)}}))
                for i, n in enumerate(names[1:], 1)]
            backend_pid = model_info(client, MODEL)["pid"]
            proc.send_signal(signal.SIGKILL)  # no shutdown code runs
            proc.wait()
        assert wait_gone(backend_pid), "the killed gateway's backend lived on"
        with gateway_process(models, data, *args, "--backend", f"alias={addr}", env=env) \
                as (_, url), httpx.Client(base_url=url, timeout=60) as client:
            listing = ok(client.get("/v1/face/registry"))
            assert listing["total"] == len(names)
            assert [i["id"] for i in listing["items"]] == [r["id"] for r in registered]
            assert [i["registered_at"] for i in listing["items"]] == \
                [r["registered_at"] for r in registered]
            for reg, n in zip(registered, names):
                top = ok(client.post("/v1/face/identify", json={
                    "img": b64(people[n][1]), "top_k": 1}))["matches"][0]
                assert (top["id"], top["name"]) == (reg["id"], n)
            gone = registered[2]["id"]
            ok(client.post("/v1/face/forget", json={"id": gone}), 204)
            assert client.post("/v1/face/forget", json={"id": gone}).status_code == 404
            assert ok(client.get("/v1/face/registry"))["total"] == len(names) - 1
            # `ext` has a config: the gateway loads it into the external (unloaded) backend.
            # `alias` has none: assumed loaded, and it is (by the call before).
            img = b64(people[names[0]][0])
            ext = ok(client.post("/v1/face/embed", json={"model": "ext", "img": img}))
            alias = ok(client.post("/v1/face/embed", json={"model": "alias", "img": img}))
            assert (ext["dim"], alias["model"]) == (128, "alias")
            assert alias["embedding"] == ext["embedding"]
            # identify compares only records of the model asked for
            assert ok(client.post("/v1/face/identify", json={"model": "ext", "img": img}))[
                "matches"] == []
            managed_pid = model_info(client, MODEL)["pid"]
        assert wait_gone(managed_pid), "a stopped gateway left its backend running"
        assert external.poll() is None  # a backend the gateway did not start is not its to stop
