"""LoadModel paths, other engines, auth and the process's life, against real processes."""
import os
import shutil
import signal
import subprocess
import sys

import grpc
import numpy as np
import pytest

from face_contract.rpc import backend_pb2 as pb
from standins import build_arcface512_standin, build_sface_standin
from support import (FACES, MODELS, ROOT, backend_process, free_port, image_b64, load_model,
                     needs_shared, stub_for)

pytestmark = needs_shared
PHOTO = FACES / "lfw_grey" / "Aaron_Sorkin" / "Aaron_Sorkin_0001.jpg"
LIVENESS = [f"antispoof_v2_onnx:{MODELS / 'minifasnet/MiniFASNetV2.onnx'}",
            f"antispoof_v1se_onnx:{MODELS / 'minifasnet/MiniFASNetV1SE.onnx'}"]


@pytest.fixture(scope="module")
def server():
    with backend_process() as (_, addr):
        stub, channel = stub_for(addr)
        yield stub
        channel.close()


def test_rpcs_before_load_model_fail_precondition(server):
    assert server.Status(pb.HealthMessage()).state == pb.StatusResponse.UNINITIALIZED
    img = image_b64(PHOTO)
    for call in (lambda: server.Embedding(pb.PredictOptions(Images=[img])),
                 lambda: server.Detect(pb.DetectOptions(src=img)),
                 lambda: server.FaceVerify(pb.FaceVerifyRequest(img1=img, img2=img)),
                 lambda: server.FaceAnalyze(pb.FaceAnalyzeRequest(img=img))):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "LoadModel" in err.value.details()


@pytest.mark.parametrize("options, words", [
    (["engine:insightface", "detector_onnx:missing/det.onnx",
      f"recognizer_onnx:{MODELS / 'recognizer-mobilefacenet-paddlex/MobileFaceNet.onnx'}"],
     ["detector_onnx", "missing/det.onnx"]),
    (["engine:insightface", f"detector_onnx:{MODELS / 'genderage/genderage.onnx'}",
      f"recognizer_onnx:{MODELS / 'recognizer-mobilefacenet-paddlex/MobileFaceNet.onnx'}"],
     ["detector_onnx", "genderage.onnx", "not a detection model"]),
    (["engine:deepface"], ["engine:deepface", "unknown"]),
    (["engine:insightface", "model_pack:buffalo_l"], ["model_pack:buffalo_l"]),
    ([f"detector_onnx:{MODELS / 'scrfd/det_500m.onnx'}",
      f"recognizer_onnx:{MODELS / 'recognizer-mobilefacenet-paddlex/MobileFaceNet.onnx'}",
      LIVENESS[0]], ["antispoof_v1se_onnx", "missing"]),
    (["engine:opencv", f"detector_onnx:{MODELS / 'scrfd/det_500m.onnx'}",
      f"recognizer_onnx:{MODELS / 'recognizer-mobilefacenet-paddlex/MobileFaceNet.onnx'}"],
     ["detector_onnx", "YuNet"]),
    (["det_thresh:high"], ["det_thresh"]),
    (["novalue"], ["novalue", "key:value"]),
    (["identify_threshold:strict"], ["identify_threshold:strict", "not a number"]),
    (["identify_threshold:0"], ["identify_threshold:0", "above 0"]),
    (["match_policy:fpr"], ["match_policy:fpr", "threshold or fpir"]),
    (["fpir:2"], ["fpir:2", "between 0 and 1"]),
])
def test_failed_load_names_the_problem_and_keeps_serving(server, tmp_path, options, words):
    result = server.LoadModel(pb.ModelOptions(Model="broken", ModelPath=str(tmp_path), Options=options))
    assert not result.success
    for word in words:
        assert word in result.message
    assert server.Health(pb.HealthMessage()).message == b"OK"


def test_pack_without_liveness_refuses_anti_spoofing(server):
    result = load_model(server, "no-liveness", [
        f"detector_onnx:{MODELS / 'scrfd/det_500m.onnx'}",
        f"recognizer_onnx:{MODELS / 'recognizer-mobilefacenet-paddlex/MobileFaceNet.onnx'}"])
    assert result.success, result.message
    img = image_b64(FACES / "silent_face" / "image_T1.jpg")
    for call in (lambda: server.FaceVerify(pb.FaceVerifyRequest(img1=img, img2=img, anti_spoofing=True)),
                 lambda: server.FaceAnalyze(pb.FaceAnalyzeRequest(img=img, anti_spoofing=True))):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "antispoof_v2_onnx" in err.value.details()
    # No genderage head: faces are reported with age and gender left empty.
    face = server.FaceAnalyze(pb.FaceAnalyzeRequest(img=img)).faces[0]
    assert face.region.w > 0 and not face.gender and face.age == 0


def test_opencv_engine_real_yunet_and_sface_standin(server, tmp_path):
    shutil.copy(MODELS / "yunet/face_detection_yunet_2023mar.onnx", tmp_path)
    build_sface_standin(tmp_path / "face_recognition_sface_2021dec.onnx")
    result = load_model(server, "opencv-standin", [
        "engine:opencv", "detector_onnx:face_detection_yunet_2023mar.onnx",
        "recognizer_onnx:face_recognition_sface_2021dec.onnx"], model_path=str(tmp_path))
    assert result.success, result.message
    group = image_b64(FACES / "facenet_pytorch" / "multiface.jpg")
    assert len(server.Detect(pb.DetectOptions(src=group)).Detections) >= 4
    reply = server.Embedding(pb.PredictOptions(Images=[image_b64(PHOTO)]))
    assert reply.dim == 128 and np.linalg.norm(reply.embeddings) == pytest.approx(1, abs=1e-4)
    verify = server.FaceVerify(pb.FaceVerifyRequest(img1=image_b64(PHOTO), img2=image_b64(PHOTO)))
    assert verify.threshold == pytest.approx(0.50) and verify.distance == pytest.approx(0, abs=1e-4)
    face = server.FaceAnalyze(pb.FaceAnalyzeRequest(img=image_b64(PHOTO))).faces[0]
    assert face.face_confidence > 0.5 and not face.gender


@pytest.mark.parametrize("nested", [False, True])
def test_buffalo_pack_folder_with_512d_standin(server, tmp_path, nested):
    pack = tmp_path / "buffalo_l" / ("buffalo_l" if nested else "")
    pack.mkdir(parents=True, exist_ok=True)
    shutil.copy(MODELS / "scrfd/det_500m.onnx", pack / "det_10g.onnx")
    shutil.copy(MODELS / "genderage/genderage.onnx", pack)
    build_arcface512_standin(pack / "w600k_r50.onnx")
    result = load_model(server, "buffalo_l", ["engine:insightface", "model_pack:buffalo_l"] + [
        f"antispoof_v2_onnx:{MODELS / 'minifasnet/MiniFASNetV2.onnx'}",
        "antispoof_v1se_onnx:" + os.path.relpath(MODELS / "minifasnet/MiniFASNetV1SE.onnx", tmp_path)],
        model_path=str(tmp_path))
    assert result.success, result.message
    reply = server.Embedding(pb.PredictOptions(Images=[image_b64(PHOTO)]))
    assert reply.dim == 512 and np.linalg.norm(reply.embeddings) == pytest.approx(1, abs=1e-4)
    verify = server.FaceVerify(pb.FaceVerifyRequest(img1=image_b64(PHOTO), img2=image_b64(PHOTO)))
    assert verify.threshold == pytest.approx(0.35) and verify.model == "buffalo_l"


def test_auth_token_is_required_when_set():
    with backend_process(env={"LOCALAI_GRPC_AUTH_TOKEN": "s3cret"}) as (_, addr):
        stub, channel = stub_for(addr)
        for metadata in (None, [("authorization", "Bearer wrong")], [("authorization", "s3cret")]):
            with pytest.raises(grpc.RpcError) as err:
                stub.Health(pb.HealthMessage(), metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        good = [("authorization", "Bearer s3cret")]
        assert stub.Health(pb.HealthMessage(), metadata=good).message == b"OK"
        channel.close()


def test_sigterm_stops_the_server_cleanly():
    addr = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-m", "backend", "--addr", addr], cwd=ROOT)
    try:
        grpc.channel_ready_future(grpc.insecure_channel(addr)).result(timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
