"""Face quality: the pose from five landmarks, the gate's reasons, and over a real gateway and
backend the quality on every answer, the enrolment gate and the probes' min_quality."""
import base64
import csv
import re
import shutil
import subprocess
import sys

import cv2
import httpx
import numpy as np
import pytest

from backend.models.align import ARCFACE_TEMPLATE
from backend.models.quality import pose
from backend.loader import check_identify_options
from face_contract.errors import ModelLoadError
from gallery.configs import ModelConfig
from gateway.quality import gate_of, reasons
from gateway_support import gateway_process, write_config
from support import FACES, ROOT, image_b64, needs_shared

MODEL = "test-pack"
LFW = FACES / "lfw_grey"
GOOD = LFW / "Aaron_Sorkin" / "Aaron_Sorkin_0001.jpg"
OTHER = LFW / "Aaron_Sorkin" / "Aaron_Sorkin_0002.jpg"


def rotated(points: np.ndarray, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return points @ np.array([[c, s], [-s, c]])


def test_the_template_faces_the_camera_and_a_turned_head_reads_as_turned():
    assert pose(ARCFACE_TEMPLATE) == pytest.approx((0, 0, 0), abs=1.0)
    assert pose(rotated(ARCFACE_TEMPLATE, 20))[2] == pytest.approx(20, abs=0.5)
    turned = ARCFACE_TEMPLATE.copy()
    turned[2, 0] += 12  # the nose towards the right eye: yaw
    yaw, pitch, _ = pose(rotated(turned, -10))
    assert yaw > 30 and abs(pitch) < 5
    raised = ARCFACE_TEMPLATE.copy()
    raised[2, 1] -= 8  # the nose nearer the eye line: pitch
    assert pose(raised)[1] < -15


def test_reasons_name_the_measured_value_and_the_bound():
    components = dict(inter_eye_px=14.2, sharpness=500, brightness=120, yaw=5, pitch=-3,
                      roll=0, clipped=0, blockiness=1.2, detector_score=0.8, embedding_norm=16)
    assert reasons(90, components, "medium") == [
        "SMALL_FACE: inter-eye distance 14 px, needs at least 28"]
    assert reasons(90, components, "off") == []
    dark_turned = {**components, "inter_eye_px": 60, "brightness": 20, "yaw": -88}
    found = reasons(2, dark_turned, "low")
    assert [r.split(":")[0] for r in found] == ["LOW_BRIGHTNESS", "EXTREME_POSE",
                                                "LOW_FACE_QUALITY"]
    assert "yaw -88 degrees, needs at most" in found[1]


def test_a_model_sets_its_gate_and_a_request_overrides_it(tmp_path):
    config = ModelConfig("m", "insightface", ["quality_gate:high"], "", [], tmp_path / "m.yaml")
    assert gate_of(config, None) == "high" and gate_of(config, "off") == "off"
    assert gate_of(None, None) == "medium"  # the default
    check_identify_options({"quality_gate": "low"})
    with pytest.raises(ModelLoadError, match="quality_gate:strict is unknown"):
        check_identify_options({"quality_gate": "strict"})  # LoadModel refuses the config


def small(path, inter_eye_px: float = 15.0, original_px: float = 47.0) -> str:
    img = cv2.imread(str(path))
    scale = inter_eye_px / original_px
    img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return base64.b64encode(cv2.imencode(".png", img)[1].tobytes()).decode()


def blurred(path) -> str:
    img = cv2.GaussianBlur(cv2.imread(str(path)), (0, 0), 3)
    return base64.b64encode(cv2.imencode(".png", img)[1].tobytes()).decode()


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    write_config(models, MODEL)
    with gateway_process(models, tmp_path_factory.mktemp("data"), "--default-model", MODEL,
                         "--backend-threads", "1") as (_, url), \
            httpx.Client(base_url=url, timeout=120) as client:
        yield client


def ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


@needs_shared
def test_every_face_answer_carries_its_quality(gw):
    analyzed = ok(gw.post("/v1/face/analyze", json={"img": image_b64(GOOD)}))["faces"]
    quality = analyzed[0]["quality"]
    assert 0 <= quality["score"] <= 100 and quality["reasons"] == []
    assert 35 < quality["components"]["inter_eye_px"] < 60
    assert {"yaw", "pitch", "roll", "sharpness", "brightness", "detector_score",
            "embedding_norm"} <= set(quality["components"])
    detected = ok(gw.post("/v1/detection", json={"image": image_b64(GOOD)}))["detections"]
    assert detected[0]["quality"] == quality
    verified = ok(gw.post("/v1/face/verify", json={"img1": image_b64(GOOD), "img2": blurred(OTHER)}))
    assert verified["img1_quality"] == quality
    assert verified["img2_quality"]["score"] < quality["score"]
    assert any(r.startswith("LOW_SHARPNESS: ") for r in verified["img2_quality"]["reasons"])


@needs_shared
def test_a_register_below_the_gate_is_refused_with_reasons_and_stores_nothing(gw):
    before = ok(gw.get("/v1/face/registry"))["total"]
    refused = gw.post("/v1/face/register", json={"img": small(GOOD), "name": "tiny"})
    assert refused.status_code == 400, refused.text
    message = refused.json()["error"]["message"]
    assert re.search(r"^the face in img is below the quality gate medium: SMALL_FACE: inter-eye "
                     r"distance 1\d px, needs at least 28", message), message
    several = gw.post("/v1/face/register", json={"imgs": [image_b64(GOOD), blurred(OTHER)],
                                                 "name": "blur"})
    assert several.status_code == 400 and "imgs[1]" in several.json()["error"]["message"]
    assert ok(gw.get("/v1/face/registry"))["total"] == before  # neither request stored a face
    # The gate per request: off lets the small face in, and the answer says why it is weak.
    taken = ok(gw.post("/v1/face/register", json={"img": small(GOOD), "name": "tiny",
                                                  "quality_gate": "off"}))
    assert taken["quality"][0]["reasons"] == []
    good = ok(gw.post("/v1/face/register", json={"img": image_b64(GOOD), "name": "Aaron"}))
    assert good["quality"][0]["score"] > 25
    bad_gate = gw.post("/v1/face/register", json={"img": image_b64(GOOD), "name": "x",
                                                  "quality_gate": "strict"})
    assert bad_gate.status_code == 400 and "quality_gate" in bad_gate.json()["error"]["message"]


@needs_shared
def test_probes_report_their_quality_and_min_quality_refuses_a_weak_one(gw):
    found = ok(gw.post("/v1/face/identify", json={"img": image_b64(OTHER)}))
    assert 0 <= found["quality"]["score"] <= 100
    weak = gw.post("/v1/face/identify", json={"img": small(OTHER), "min_quality": 99.9})
    assert weak.status_code == 400
    message = weak.json()["error"]["message"]
    assert "below min_quality: LOW_FACE_QUALITY: quality" in message and "SMALL_FACE" in message
    refused = gw.post("/v1/face/verify", json={"img1": image_b64(GOOD), "img2": small(OTHER),
                                               "min_quality": 99.9})
    assert refused.status_code == 400 and "img" in refused.json()["error"]["message"]


@needs_shared
def test_enroll_registers_the_good_photos_and_lists_the_refused(gw, tmp_path):
    folder = tmp_path / "people"
    (folder / "Aaron_Sorkin").mkdir(parents=True)
    shutil.copy(GOOD, folder / "Aaron_Sorkin" / "good.jpg")
    (folder / "Aaron_Sorkin" / "small.png").write_bytes(base64.b64decode(small(OTHER)))
    (folder / "Aaron_Sorkin" / "blur.png").write_bytes(base64.b64decode(blurred(OTHER)))
    refused_csv = tmp_path / "refused.csv"
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "enroll", str(folder), "--model", MODEL,
         "--url", str(gw.base_url), "--refused-csv", str(refused_csv)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr  # a refused photo fails nothing
    assert "registered 1," in run.stdout and "refused by the quality gate 2," in run.stdout
    assert "refused: Aaron_Sorkin/small.png: medium: SMALL_FACE" in run.stdout
    with open(refused_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == ["Aaron_Sorkin/blur.png", "Aaron_Sorkin/small.png"]
    assert "LOW_SHARPNESS" in rows[0]["reasons"] and "SMALL_FACE" in rows[1]["reasons"]
