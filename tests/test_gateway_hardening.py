"""A keyed gateway on the real pack: scopes against real answers, liveness that refuses what it
cannot judge, and a schemathesis run over the gateway's own /openapi.json (no 5xx, no answer
outside the schema)."""
import base64
import io

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from gateway.schemas import IMAGE_FIELDS
from gateway_support import error_message as error_of, gateway_process, write_config
from support import FACES, needs_shared, read_labels

pytestmark = needs_shared

RW, RO = "hardening-rw-6c1f0e9a2b7d", "hardening-ro-4e8b2d6a0c9f"
MODEL = "test-pack"
LIVE = FACES / "silent_face" / "image_T1.jpg"   # real face, colour, room around it
SPOOF = FACES / "silent_face" / "image_F1.jpg"  # a photo of a photo
FACE = base64.b64encode(LIVE.read_bytes()).decode() if LIVE.exists() else ""
FUZZ_EXAMPLES = 75  # per route: about a minute on 2 shared cores for the whole run


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def grey_lfw() -> bytes:
    """A real single-channel JPEG of the LFW greyscale set."""
    return (FACES / "lfw_grey" / read_labels("lfw_grey")[0]["file"]).read_bytes()


def grey_three_channels(path) -> bytes:
    """A colour photo turned grey and saved as a 3-channel JPEG: equal channels, not 1."""
    out = io.BytesIO()
    Image.open(path).convert("L").convert("RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hardening")
    write_config(tmp / "models", MODEL)
    with gateway_process(tmp / "models", tmp / "data", "--backend-timeout", "30",
                         env={"FACE_API_KEYS": f"{RW},{RO}:ro"}) as (_, base_url):
        yield base_url


@pytest.fixture(scope="module")
def rw(url):
    with httpx.Client(base_url=url, timeout=60, headers={"x-api-key": RW}) as client:
        yield client


@pytest.fixture(scope="module")
def ro(url):
    with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {RO}"}) \
            as client:
        yield client



def test_scopes_on_real_answers(rw, ro):
    img = b64(LIVE.read_bytes())
    for path, body in [("/v1/face/verify", {"img1": img, "img2": img}),
                       ("/v1/face/analyze", {"img": img}), ("/v1/face/embed", {"img": img}),
                       ("/v1/detection", {"image": img}), ("/v1/face/identify", {"img": img})]:
        assert ro.post(path, json=body).status_code == 200, path
    error_of(ro.post("/v1/face/register", json={"img": img, "name": "ro"}), 403, "read-only")
    record = rw.post("/v1/face/register", json={"img": img, "name": "rw"})
    assert record.status_code == 200
    assert ro.get("/v1/face/registry", params={"name": "rw"}).json()["total"] == 1
    error_of(ro.post("/v1/face/forget", json={"id": record.json()["id"]}), 403, "read-only")
    assert rw.post("/v1/face/forget", json={"id": record.json()["id"]}).status_code == 204
    model = next(m for m in rw.get("/v1/models").json()["data"] if m["id"] == MODEL)
    assert model["pid"] > 0 and model["address"].startswith("127.0.0.1:")
    assert ro.get("/v1/models").json()["data"] == [{"id": MODEL, "object": "model",
                                                   "loaded": True}]


@pytest.mark.parametrize("grey", [grey_lfw, lambda: grey_three_channels(LIVE)],
                         ids=["one-channel", "three-equal-channels"])
def test_liveness_refuses_greyscale_images(ro, grey):
    colour, grey = b64(LIVE.read_bytes()), b64(grey())
    error_of(ro.post("/v1/face/analyze", json={"img": grey, "anti_spoofing": True}), 400,
             "liveness needs a colour image", "img")
    error_of(ro.post("/v1/face/verify", json={"img1": colour, "img2": grey,
                                              "anti_spoofing": True}),
             400, "liveness needs a colour image", "img2")
    # Without liveness the greyscale photo is an ordinary input.
    assert ro.post("/v1/face/verify", json={"img1": colour, "img2": grey}).status_code == 200
    faces = ro.post("/v1/face/analyze", json={"img": grey}).json()["faces"]
    assert faces and "is_real" not in faces[0]


def test_verify_names_the_image_that_failed_liveness(ro):
    live, spoof = b64(LIVE.read_bytes()), b64(SPOOF.read_bytes())
    both_real = ro.post("/v1/face/verify", json={"img1": live, "img2": live,
                                                 "anti_spoofing": True}).json()
    assert both_real["verified"] and "failed_liveness" not in both_real
    # threshold 2.0: any two faces match, so only liveness can make it false
    forced = ro.post("/v1/face/verify", json={"img1": live, "img2": spoof, "threshold": 2.0,
                                              "anti_spoofing": True}).json()
    assert forced["verified"] is False and forced["failed_liveness"] == ["img2"]
    assert forced["img1_is_real"] and not forced["img2_is_real"]
    swapped = ro.post("/v1/face/verify", json={"img1": spoof, "img2": live, "threshold": 2.0,
                                               "anti_spoofing": True}).json()
    assert swapped["failed_liveness"] == ["img1"]


def with_a_real_face(case):
    """Generated strings are never images: this puts a real face in a valid case's image
    fields, with the default model, so that the fuzz reaches the backend too."""
    def face_for(value):  # `imgs` is a list of images, the other image fields one image
        return [FACE for _ in value] if isinstance(value, list) else FACE
    if isinstance(case.body, dict):
        case.body = {field: face_for(value) if field in IMAGE_FIELDS else value
                     for field, value in case.body.items() if field != "model"}
    return case


def test_fuzz_openapi_no_5xx_and_answers_match_the_schema(url):
    """Valid and invalid requests generated from the schema, FUZZ_EXAMPLES per route. Driven
    through hypothesis directly: schemathesis's pytest plugin does not run under pytest 9."""
    auth = {"Authorization": f"Bearer {RW}"}
    spec = httpx.get(f"{url}/openapi.json", headers=auth).json()
    # Without the key schemes, generated cases carry no made-up keys: the fuzz is for what lies
    # behind the keys, which every case sends (test_gateway_auth.py covers refused keys).
    del spec["components"]["securitySchemes"]
    for operations in spec["paths"].values():
        for operation in operations.values():
            operation.pop("security", None)
    api = schemathesis.openapi.from_dict(spec)
    failures, routes = [], 0
    for result in api.get_all_operations():
        operation, routes = result.ok(), routes + 1
        cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                          operation.as_strategy(GenerationMode.POSITIVE).map(with_a_real_face),
                          operation.as_strategy(GenerationMode.NEGATIVE))

        @given(case=cases)
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def fuzz(case):
            # Random strings are seldom images, so schema-valid bodies may rightly get a 400:
            # positive_data_acceptance (a 2xx for every valid body) does not apply.
            case.call_and_validate(base_url=url, headers=auth, timeout=60,
                                   excluded_checks=[positive_data_acceptance])
        try:
            fuzz()
        except (Exception, BaseExceptionGroup) as exc:  # every route is fuzzed; all failures
            # are reported together (schemathesis raises a BaseExceptionGroup)
            failures.append(f"{operation.label}: {exc}")
    assert routes >= 10, "the schema lost its routes"
    assert not failures, "\n\n".join(failures)
