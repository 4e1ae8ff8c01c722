"""The gRPC backend as a real process, with the real test pack from ../shared/models."""
import base64
import concurrent.futures
import csv
import io
import itertools

import cv2
import grpc
import numpy as np
import pytest
from PIL import Image

from face_contract.rpc import backend_pb2 as pb
from support import (FACES, backend_process, image_b64, load_model,
                     needs_shared, read_labels, stub_for)

pytestmark = needs_shared
MODEL = "test-pack"


@pytest.fixture(scope="module")
def stub():
    with backend_process() as (_, addr):
        stub, channel = stub_for(addr)
        result = load_model(stub, MODEL)
        assert result.success, result.message
        yield stub
        channel.close()


def lfw(path):
    return image_b64(FACES / "lfw_grey" / path)


def colour_pairs():
    """Same- and different-identity pairs within the colour photo sets."""
    by_id = {}
    for folder in ("deepface", "face_recognition", "facenet_pytorch", "insightface"):
        for row in read_labels(folder):
            if row["identity"]:
                by_id.setdefault((folder, row["identity"]), []).append(FACES / folder / row["file"])
    same = [p for files in by_id.values() for p in itertools.combinations(sorted(files), 2)]
    firsts = [files[0] for files in by_id.values()]
    different = list(itertools.combinations(firsts, 2))
    return same[:60], different[:60]


def test_verification_accuracy_on_real_pairs(stub):
    with open(FACES / "lfw_grey" / "pairs.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["fold"] == "1"]
    pairs = [(FACES / "lfw_grey" / r["file1"], FACES / "lfw_grey" / r["file2"], r["same"] == "1")
             for r in rows]
    same, different = colour_pairs()
    pairs += [(a, b, True) for a, b in same] + [(a, b, False) for a, b in different]

    def verify(pair):
        a, b, expected = pair
        reply = stub.FaceVerify(pb.FaceVerifyRequest(img1=image_b64(a), img2=image_b64(b)), timeout=60)
        return reply.verified == expected, reply

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(verify, pairs))
    n_same = sum(1 for p in pairs if p[2])
    accuracy = sum(ok for ok, _ in results) / len(results)
    print(f"\nverification: {len(pairs)} pairs ({n_same} same, {len(pairs) - n_same} different), "
          f"accuracy {accuracy:.4f} at threshold {results[0][1].threshold:.2f}")
    assert n_same >= 200 and len(pairs) - n_same >= 200
    assert accuracy >= 0.98
    reply = results[0][1]
    assert reply.model == MODEL and reply.threshold == pytest.approx(0.74)
    assert reply.processing_time_ms > 0 and reply.img1_area.w > 0 and reply.img2_area.h > 0


def test_verify_fields_follow_the_distance(stub):
    a, b = lfw("Aaron_Sorkin/Aaron_Sorkin_0001.jpg"), lfw("Aaron_Sorkin/Aaron_Sorkin_0002.jpg")
    reply = stub.FaceVerify(pb.FaceVerifyRequest(img1=a, img2=b))
    assert reply.verified and 0 <= reply.distance < 0.74
    assert reply.confidence == pytest.approx((1 - reply.distance / 0.74) * 100, abs=1e-3)
    strict = stub.FaceVerify(pb.FaceVerifyRequest(img1=a, img2=b, threshold=reply.distance / 2))
    assert not strict.verified and strict.confidence == 0
    assert strict.threshold == pytest.approx(reply.distance / 2)


def test_embedding_is_l2_normalised_primary_face(stub):
    reply = stub.Embedding(pb.PredictOptions(Images=[lfw("Aaron_Sorkin/Aaron_Sorkin_0001.jpg")]))
    vec = np.array(reply.embeddings)
    assert reply.dim == 128 == vec.size
    assert reply.layout == pb.EMBEDDING_LAYOUT_FINAL
    assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-4)


def test_data_uri_and_exif_orientation(stub):
    path = FACES / "lfw_grey" / "Aaron_Sorkin/Aaron_Sorkin_0001.jpg"
    plain = stub.Embedding(pb.PredictOptions(Images=[image_b64(path)]))
    uri = "data:image/jpeg;base64," + image_b64(path)
    same = stub.Embedding(pb.PredictOptions(Images=[uri]))
    assert np.allclose(plain.embeddings, same.embeddings, atol=1e-5)
    # Pixels stored rotated, with the EXIF tag that says how to turn them upright.
    img = Image.open(path).convert("RGB").rotate(90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, exif=exif)
    upright = stub.Embedding(pb.PredictOptions(Images=[base64.b64encode(buf.getvalue()).decode()]))
    assert float(np.dot(plain.embeddings, upright.embeddings)) > 0.9


def test_detect_reports_every_face_and_honours_threshold(stub):
    group = image_b64(FACES / "facenet_pytorch" / "multiface.jpg")
    faces = stub.Detect(pb.DetectOptions(src=group)).Detections
    assert len(faces) >= 4
    areas = [d.width * d.height for d in faces]
    assert areas == sorted(areas, reverse=True)
    assert all(d.class_name == "face" and d.confidence >= 0.5 for d in faces)
    strict = stub.Detect(pb.DetectOptions(src=group, threshold=0.8)).Detections
    assert all(d.confidence >= 0.8 for d in strict) and len(strict) <= len(faces)
    loose = stub.Detect(pb.DetectOptions(src=group, threshold=0.3)).Detections
    assert len(loose) >= len(faces) and min(d.confidence for d in loose) >= 0.3


def test_analyze_every_face_with_gender_probabilities(stub):
    reply = stub.FaceAnalyze(pb.FaceAnalyzeRequest(img=image_b64(FACES / "facenet_pytorch" / "multiface.jpg")))
    assert len(reply.faces) >= 4
    for face in reply.faces:
        assert set(face.gender) == {"Woman", "Man"}
        assert sum(face.gender.values()) == pytest.approx(1.0, abs=1e-4)
        assert face.dominant_gender == max(face.gender, key=face.gender.get)
        assert 0 < face.age < 100 and not face.dominant_emotion and not face.race
    only_age = stub.FaceAnalyze(pb.FaceAnalyzeRequest(
        img=lfw("Aaron_Sorkin/Aaron_Sorkin_0001.jpg"), actions=["age"]))
    assert only_age.faces[0].age > 0 and not only_age.faces[0].gender
    assert not only_age.faces[0].dominant_gender
    with pytest.raises(grpc.RpcError) as err:
        stub.FaceAnalyze(pb.FaceAnalyzeRequest(img=lfw("Aaron_Sorkin/Aaron_Sorkin_0001.jpg"),
                                               actions=["mood"]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "mood" in err.value.details()


def test_analyze_utkface_gender_and_age(stub):
    rows = read_labels("utkface")
    correct, errors = 0, []
    for row in rows:
        reply = stub.FaceAnalyze(pb.FaceAnalyzeRequest(img=image_b64(FACES / "utkface" / row["file"])))
        assert reply.faces, f"no face found in utkface/{row['file']}"
        face = reply.faces[0]
        assert sum(face.gender.values()) == pytest.approx(1.0, abs=1e-4)
        correct += face.dominant_gender == {"M": "Man", "F": "Woman"}[row["gender"]]
        errors.append(abs(face.age - float(row["age"])))
    accuracy = correct / len(rows)
    print(f"\nutkface ({len(rows)} face-filling crops): gender accuracy {accuracy:.3f}, "
          f"age MAE {np.mean(errors):.1f} years")
    assert accuracy >= 0.70


def liveness(stub, path):
    reply = stub.FaceAnalyze(pb.FaceAnalyzeRequest(img=image_b64(path), actions=["age"],
                                                   anti_spoofing=True))
    return reply.faces[0]


def test_liveness_silent_face_samples(stub):
    assert liveness(stub, FACES / "silent_face" / "image_T1.jpg").is_real
    for fake in ("image_F1.jpg", "image_F2.jpg"):
        face = liveness(stub, FACES / "silent_face" / fake)
        assert not face.is_real and face.antispoof_score < 0.5


def test_liveness_accuracy_on_nuaa(stub):
    rows = read_labels("nuaa")
    correct = sum(liveness(stub, FACES / "nuaa" / r["file"]).is_real == (r["is_real"] == "1")
                  for r in rows)
    accuracy = correct / len(rows)
    print(f"\nnuaa liveness ({len(rows)} images): accuracy {accuracy:.4f}")
    assert accuracy >= 0.95


def test_verify_with_anti_spoofing_rejects_a_spoof(stub):
    real, fake = (image_b64(FACES / "silent_face" / n) for n in ("image_T1.jpg", "image_F1.jpg"))
    reply = stub.FaceVerify(pb.FaceVerifyRequest(img1=real, img2=fake, anti_spoofing=True,
                                                 threshold=2.0))
    assert reply.distance < 2.0 and not reply.verified
    assert reply.img1_is_real and not reply.img2_is_real
    assert reply.img1_antispoof_score > 0.5 > reply.img2_antispoof_score


def test_liveness_refuses_face_filling_crops(stub):
    with pytest.raises(grpc.RpcError) as err:
        liveness(stub, FACES / "utkface" / read_labels("utkface")[0]["file"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cropped too tightly for liveness" in err.value.details()


def test_liveness_refuses_greyscale_with_invalid_argument(stub):
    grey = lfw(read_labels("lfw_grey")[0]["file"])
    live = image_b64(FACES / "silent_face" / "image_T1.jpg")
    for call in (lambda: stub.FaceAnalyze(pb.FaceAnalyzeRequest(img=grey, anti_spoofing=True)),
                 lambda: stub.FaceVerify(pb.FaceVerifyRequest(img1=live, img2=grey,
                                                              anti_spoofing=True))):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "liveness needs a colour image" in err.value.details()


def test_greyscale_test_on_real_photos():
    """Every liveness photo is colour; LFW's one-channel JPEGs and a sepia-toned UTKFace chip
    are greyscale, so liveness refuses them instead of calling every face a spoof."""
    from backend.images import decode_bytes
    from backend.models.minifasnet import is_greyscale

    def grey(path):
        return is_greyscale(decode_bytes(path.read_bytes()))
    for folder in ("nuaa", "silent_face", "liveness_opencv_frames"):
        assert not any(grey(FACES / folder / row["file"]) for row in read_labels(folder)), folder
    assert all(grey(FACES / "lfw_grey" / row["file"]) for row in read_labels("lfw_grey")[:50])
    assert grey(FACES / "utkface" / "110_1_1_20170110155201038.jpg.chip.jpg")


def garbage():
    return base64.b64encode(b"this is not an image at all").decode()


def no_face_image():
    ok, buf = cv2.imencode(".png", np.full((300, 300, 3), 200, np.uint8))
    return base64.b64encode(buf.tobytes()).decode()


@pytest.mark.parametrize("call", [
    lambda s, img: s.Embedding(pb.PredictOptions(Images=[img])),
    lambda s, img: s.FaceVerify(pb.FaceVerifyRequest(img1=img, img2=img)),
    lambda s, img: s.Detect(pb.DetectOptions(src=img)),
    lambda s, img: s.FaceAnalyze(pb.FaceAnalyzeRequest(img=img)),
])
def test_garbage_image_is_invalid_argument(stub, call):
    for img in (garbage(), "", "%%%not-base64%%%"):
        with pytest.raises(grpc.RpcError) as err:
            call(stub, img)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()


def test_no_face(stub):
    blank = no_face_image()
    for call in (lambda: stub.Embedding(pb.PredictOptions(Images=[blank])),
                 lambda: stub.FaceVerify(pb.FaceVerifyRequest(img1=lfw("Aaron_Sorkin/Aaron_Sorkin_0001.jpg"),
                                                              img2=blank))):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "no face" in err.value.details()
    assert list(stub.Detect(pb.DetectOptions(src=blank)).Detections) == []
    assert list(stub.FaceAnalyze(pb.FaceAnalyzeRequest(img=blank)).faces) == []


def test_model_identity_is_checked(stub):
    img = lfw("Aaron_Sorkin/Aaron_Sorkin_0001.jpg")
    assert stub.Embedding(pb.PredictOptions(Images=[img], ModelIdentity=MODEL)).dim == 128
    with pytest.raises(grpc.RpcError) as err:
        stub.Embedding(pb.PredictOptions(Images=[img], ModelIdentity="another-model"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "model identity mismatch" in err.value.details()


def test_health_and_status(stub):
    assert stub.Health(pb.HealthMessage()).message == b"OK"
    status = stub.Status(pb.HealthMessage())
    assert status.state == pb.StatusResponse.READY and status.memory.total > 0
