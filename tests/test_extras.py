"""The FaceExtras service beside LocalAI's Backend, on the same backend process and port."""
import base64

import cv2
import grpc
import numpy as np
import pytest

from face_contract.rpc import backend_pb2 as pb
from face_contract.rpc import face_extras_pb2 as xpb
from face_contract.rpc import face_extras_pb2_grpc as xpb_grpc
from support import FACES, backend_process, image_b64, load_model, needs_shared, stub_for

pytestmark = needs_shared
COUPLE = FACES / "deepface" / "couple.jpg"
OBAMA = FACES / "face_recognition" / "examples" / "knn_examples" / "train" / "obama" / "obama.jpg"


@pytest.fixture(scope="module")
def stubs():
    with backend_process() as (_, addr):
        stub, channel = stub_for(addr)
        assert load_model(stub).success
        yield stub, xpb_grpc.FaceExtrasStub(channel)
        channel.close()


def test_faces_answers_every_face_with_landmarks_embeddings_and_crops(stubs):
    stub, extras = stubs
    detected = stub.Detect(pb.DetectOptions(src=image_b64(COUPLE)), timeout=60).Detections
    reply = extras.Faces(xpb.FacesRequest(src=image_b64(COUPLE), all_faces=True, embeddings=True,
                                          aligned_crops=True), timeout=60)
    assert len(reply.faces) == len(detected) >= 2
    areas = [f.w * f.h for f in reply.faces]
    assert areas == sorted(areas, reverse=True)  # largest first, the primary face first
    for face in reply.faces:
        assert len(face.landmarks) == 10 and len(face.embedding) == reply.dim == 128
        assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-4)
        crop = cv2.imdecode(np.frombuffer(face.aligned_crop, np.uint8), cv2.IMREAD_COLOR)
        assert crop.shape == (112, 112, 3)
    primary = extras.Faces(xpb.FacesRequest(src=image_b64(COUPLE), embeddings=True), timeout=60)
    assert len(primary.faces) == 1 and not primary.faces[0].aligned_crop
    assert list(primary.faces[0].embedding) == pytest.approx(list(reply.faces[0].embedding))


def test_an_aligned_crop_embeds_as_the_photo_does(stubs):
    stub, extras = stubs
    face = extras.Faces(xpb.FacesRequest(src=image_b64(OBAMA), embeddings=True,
                                         aligned_crops=True), timeout=60).faces[0]
    again = extras.EmbedAligned(xpb.AlignedRequest(crops=[face.aligned_crop]), timeout=60)
    assert list(again.embeddings[0].values) == pytest.approx(list(face.embedding), abs=1e-5)
    lossless = stub.Embedding(pb.PredictOptions(Images=[image_b64(OBAMA)]), timeout=60)
    assert list(lossless.embeddings) == pytest.approx(list(face.embedding), abs=1e-5)


def test_a_crop_that_is_no_aligned_png_is_refused(stubs):
    _, extras = stubs
    with pytest.raises(grpc.RpcError) as err:
        extras.EmbedAligned(xpb.AlignedRequest(crops=[OBAMA.read_bytes()]), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "crops[0] is not a 112x112 PNG aligned crop" in err.value.details()


def test_no_face_is_an_empty_list_not_an_error(stubs):
    _, extras = stubs
    blank = cv2.imencode(".png", np.full((64, 64, 3), 128, np.uint8))[1].tobytes()
    reply = extras.Faces(xpb.FacesRequest(src=base64.b64encode(blank).decode()), timeout=60)
    assert list(reply.faces) == []


def test_faces_answers_each_face_quality_when_asked(stubs):
    _, extras = stubs
    plain = extras.Faces(xpb.FacesRequest(src=image_b64(OBAMA)), timeout=60).faces[0]
    assert not plain.HasField("quality")  # costs an embedding run: only when asked
    face = extras.Faces(xpb.FacesRequest(src=image_b64(OBAMA), quality=True), timeout=60).faces[0]
    parts = dict(face.quality.components)
    assert set(parts) == {"inter_eye_px", "yaw", "pitch", "roll", "sharpness", "brightness",
                          "clipped", "blockiness", "detector_score", "embedding_norm"}
    assert 0 < face.quality.score <= 100 and parts["detector_score"] == pytest.approx(face.score)
    eyes = np.subtract(face.landmarks[2:4], face.landmarks[0:2])
    assert parts["inter_eye_px"] == pytest.approx(float(np.linalg.norm(eyes)), rel=1e-4)
    # A quarter of the size: a quarter of the inter-eye distance; a heavy blur: no sharpness.
    img = cv2.imread(str(OBAMA))
    small = cv2.resize(img, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(img, (0, 0), 4)
    for changed, name in ((small, "inter_eye_px"), (blurred, "sharpness")):
        src = base64.b64encode(cv2.imencode(".png", changed)[1].tobytes()).decode()
        worse = extras.Faces(xpb.FacesRequest(src=src, quality=True), timeout=60).faces[0]
        assert worse.quality.components[name] < parts[name] * (0.3 if name == "inter_eye_px"
                                                                else 0.2)
