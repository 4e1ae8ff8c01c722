"""Request and response bodies of the /v1/face API (PROTOCOL.md section 2).

Field names are those of the gRPC messages. Optional response fields are None
when not computed and dropped from the JSON (routes use response_model_exclude_none).
"""
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from face_contract.errors import InvalidInput
from face_contract.quality import GATE_LEVELS

MAX_LABELS = 32
MAX_LABEL_KEY = 64
MAX_LABEL_VALUE = 256
MAX_NAME = 256
MAX_TOP_K = 1000
MAX_LIST_LIMIT = 1000
MAX_LIST_OFFSET = 2**31 - 1
MAX_ACTIONS = 8
MAX_ACTION = 32
MAX_ID = 256          # model, store and record ids
DEFAULT_MAX_FACES = 100
MAX_FACES = 1000
MAX_REGISTER_IMAGES = 32
MAX_CLUSTER_IMAGES = 100

ModelField = Field(None, max_length=MAX_ID,
                   description="installed model name; omitted: the gateway's default model")
StoreField = Field(None, max_length=MAX_ID,
                   description="configured store name; omitted: local-store")
# Cosine distances lie in [0, 2]: anything else, or not finite, is a 400. 0 keeps its
# PROTOCOL.md meaning, the model's default, like an omitted threshold.
DistanceThreshold = Field(None, ge=0, le=2, allow_inf_nan=False,
                          description="cosine distance in (0, 2]; 0 or omitted: the model's "
                                      "default")
QualityGateField = Field(
    None, description="refuse a face below this quality gate (400 with the reasons): off, low, "
                      "medium or high; omitted: the model's quality_gate option, else medium")
MinQualityField = Field(None, ge=0, le=100, allow_inf_nan=False,
                        description="refuse a probe whose quality score (0-100) is below this "
                                    "(400 with the reasons) instead of answering a likely wrong "
                                    "match; omitted: no bound")
QualityGate = Literal[GATE_LEVELS]
Action = Annotated[str, StringConstraints(max_length=MAX_ACTION)]
ImageDoc = ("http(s) URL, data: URI or bare base64 image bytes (or, in a multipart/form-data "
            "request, the image file)")
# The image fields, by the names callers send (a multipart upload's file parts).
IMAGE_FIELDS = ("img", "img1", "img2", "image", "imgs")  # imgs: the part repeated
# A whole JPEG (16x16, the smallest accepted, in colour, as liveness needs; no face: photos
# do not belong in the project), so that every example is a request that decodes and is
# answered; put a photo of a face in its place.
JPEG = ("/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDABALDA4MChAODQ4SERATGCgaGBYWGDEjJR0oOjM9PDkzODdA"
        "SFxOQERXRTc4UG1RV19iZ2hnPk1xeXBkeFxlZ2P/2wBDARESEhgVGC8aGi9jQjhCY2NjY2NjY2NjY2Nj"
        "Y2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2P/wAARCAAQABADASIAAhEBAxEB/8QA"
        "HwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIh"
        "MUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVW"
        "V1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXG"
        "x8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/8QAHwEAAwEBAQEBAQEBAQAAAAAAAAECAwQF"
        "BgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdhcRMiMoEIFEKRobHBCSMzUvAV"
        "YnLRChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6goOE"
        "hYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq"
        "8vP09fb3+Pn6/9oADAMBAAIRAxEAPwC5RRRXIdp//9k=")


def not_blank(name: str | None) -> str | None:
    if name is not None and not name.strip():
        raise ValueError("name must not be blank")
    return name


def bounded_labels(labels: dict[str, str] | None) -> dict[str, str] | None:
    if labels is None:
        return None
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels are allowed, got {len(labels)}")
    for key, value in labels.items():
        if not key or len(key) > MAX_LABEL_KEY:
            raise ValueError(f"label keys must be 1 to {MAX_LABEL_KEY} characters")
        if len(value) > MAX_LABEL_VALUE:
            raise ValueError(f"label '{key}' is longer than {MAX_LABEL_VALUE} characters")
    return labels


def example(**body) -> ConfigDict:
    """A request example for the OpenAPI docs: only the fields it is about, the rest default
    (docs.py makes it what Swagger's "Try it out" pre-fills)."""
    return ConfigDict(json_schema_extra={"examples": [body]})


# -- requests -------------------------------------------------------------------

class VerifyRequest(BaseModel):
    model_config = example(img1=JPEG, img2=JPEG)

    model: str | None = ModelField
    img1: str = Field(description=ImageDoc)
    img2: str = Field(description=ImageDoc)
    threshold: float | None = DistanceThreshold
    anti_spoofing: bool = False
    min_quality: float | None = MinQualityField


class AnalyzeRequest(BaseModel):
    model_config = example(img=JPEG, actions=["age", "gender"], anti_spoofing=True)

    model: str | None = ModelField
    img: str = Field(description=ImageDoc)
    actions: list[Action] | None = Field(
        None, max_length=MAX_ACTIONS, description=f"attributes to compute (age, gender), at most "
                                                  f"{MAX_ACTIONS}; omitted or empty: all supported. "
                                                  "emotion and race are accepted but never "
                                                  "computed: the answer lists them in "
                                                  "unsupported_actions")
    anti_spoofing: bool = False


class EmbedRequest(BaseModel):
    model_config = example(img="data:image/jpeg;base64," + JPEG)

    model: str | None = ModelField
    img: str = Field(description=ImageDoc)


class RegisterRequest(BaseModel):
    model_config = example(img=JPEG, name="Ann Lee", labels={"team": "blue"})

    model: str | None = ModelField
    img: str | None = Field(None, description=f"{ImageDoc}; exactly one of img and imgs")
    imgs: list[str] | None = Field(
        None, min_length=1, max_length=MAX_REGISTER_IMAGES,
        description=f"several photos of the same person ({ImageDoc}): one record each, "
                    "or one template record with `template`")
    template: bool = Field(False, description="with imgs: store one record whose embedding is "
                                              "the re-normalised mean of the photos' embeddings")
    name: str | None = Field(None, min_length=1, max_length=MAX_NAME,
                             description="a new person's name; exactly one of name and person_id")
    person_id: str | None = Field(None, min_length=1, max_length=MAX_ID,
                                  description="add the photo(s) to this person (404 if unknown); "
                                              "omitted: a new person, all of imgs in one")
    labels: dict[str, str] | None = Field(
        None, description=f"at most {MAX_LABELS} labels; keys up to {MAX_LABEL_KEY} and "
                          f"values up to {MAX_LABEL_VALUE} characters")
    store: str | None = StoreField
    quality_gate: QualityGate | None = QualityGateField

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str | None) -> str | None:
        return not_blank(value)

    _labels = field_validator("labels")(bounded_labels)


    def photos(self) -> list[tuple[str, str]]:
        """(field name, image) of each photo sent; 400 unless exactly one of img / imgs is."""
        if (self.img is None) == (self.imgs is None):
            raise InvalidInput("send exactly one of img (one photo) or imgs (several photos "
                               "of one person)")
        if self.name is None and self.person_id is None:
            raise InvalidInput("name is required (or person_id, to add photos to a person)")
        if self.name is not None and self.person_id is not None:  # the person has its name
            raise InvalidInput("send name (a new person) or person_id (photos of a registered "
                               "person, who keeps their name), not both")
        if self.img is not None:
            return [("img", self.img)]
        return [(f"imgs[{i}]", img) for i, img in enumerate(self.imgs)]


class IdentifyRequest(BaseModel):
    model_config = example(img=JPEG, top_k=3)

    model: str | None = ModelField
    img: str = Field(description=ImageDoc)
    top_k: int = Field(5, ge=1, le=MAX_TOP_K)
    threshold: float | None = DistanceThreshold  # 0 or omitted: by match_policy
    match_policy: Literal["threshold", "fpir"] | None = Field(
        None, description="threshold: the model's identify_threshold; fpir: a threshold derived "
                          "from the gallery size so that a stranger matches anyone with "
                          "probability `fpir`; omitted: the model's match_policy option, else "
                          "fpir when `fpir` is given, else threshold")
    fpir: float | None = Field(None, gt=0, lt=1, description="target false-positive "
                               "identification rate of match_policy fpir (default: the model's "
                               "fpir option, else 0.01)")
    group_by: Literal["name", "person"] | None = Field(
        None, description="person: one match per registered person (person_id, faces), so a "
                          "person enrolled with many photos does not fill the top_k alone; "
                          "name: one match per name (their nearest face)")
    all_faces: bool = Field(False, description="every face of the photo: the answer adds "
                            "`faces`, one entry each, a person given to at most one face "
                            "(matches: the largest face's)")
    store: str | None = StoreField
    min_quality: float | None = MinQualityField


class PersonPatch(BaseModel):
    model_config = example(name="Ann Lee-Smith", labels={"team": "red"})

    name: str | None = Field(None, min_length=1, max_length=MAX_NAME)
    labels: dict[str, str] | None = Field(None, description="replace the person's labels")

    _name = field_validator("name")(not_blank)
    _labels = field_validator("labels")(bounded_labels)


class MergeRequest(BaseModel):
    model_config = example(**{"into": "5f0c6f1e-9b8d-4c43-a1e2-b7d9c0a4f6e1",
                              "from": ["0b7e2c1d-3f4a-4e5b-8c6d-7e8f9a0b1c2d"]})

    into: str = Field(min_length=1, max_length=MAX_ID, description="the person that stays")
    from_: list[Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID)]] = Field(
        alias="from", min_length=1, max_length=MAX_LIST_LIMIT,
        description="people whose faces move to `into`; they are deleted")
    store: str | None = StoreField


class MoveRequest(BaseModel):
    model_config = example(face_id="5f0c6f1e-9b8d-4c43-a1e2-b7d9c0a4f6e1")

    face_id: str = Field(min_length=1, max_length=MAX_ID)
    person_id: str | None = Field(None, min_length=1, max_length=MAX_ID,
                                  description="the person it moves to; omitted: a new person "
                                              "of its own (a split)")
    store: str | None = StoreField


class ForgetRequest(BaseModel):
    model_config = example(id="5f0c6f1e-9b8d-4c43-a1e2-b7d9c0a4f6e1")

    id: str = Field(min_length=1, max_length=MAX_ID)
    store: str | None = StoreField


class DetectionRequest(BaseModel):
    model_config = example(image=JPEG)

    model: str | None = ModelField
    image: str = Field(description=ImageDoc)
    threshold: float | None = Field(None, ge=0, le=1, allow_inf_nan=False,
                                    description="lowest confidence returned")
    max_faces: int = Field(DEFAULT_MAX_FACES, ge=1, le=MAX_FACES,
                           description=f"most faces returned, the most confident kept "
                                       f"(at most {MAX_FACES})")


# -- responses ------------------------------------------------------------------

class FacialArea(BaseModel):
    x: float
    y: float
    w: float
    h: float


class FaceQuality(BaseModel):
    score: float = Field(description="0-100: how likely the face is to be recognised (fitted "
                                     "to predict failed genuine comparisons)")
    components: dict[str, float] = Field(
        description="what the score is made of: inter_eye_px, yaw, pitch, roll (degrees), "
                    "sharpness, brightness (0-255), clipped (share of pixels), blockiness "
                    "(JPEG blocking), detector_score, embedding_norm")
    reasons: list[str] = Field(description="what keeps the face below the quality gate, each "
                                           "with its measured value and bound; empty: none")


class VerifyResponse(BaseModel):
    verified: bool
    distance: float
    threshold: float
    confidence: float
    model: str
    img1_area: FacialArea
    img2_area: FacialArea
    processing_time_ms: float
    img1_is_real: bool | None = None
    img1_antispoof_score: float | None = None
    img2_is_real: bool | None = None
    img2_antispoof_score: float | None = None
    failed_liveness: list[Literal["img1", "img2"]] | None = Field(
        None, description="with anti_spoofing: the images judged not real, which forced "
                          "`verified` to false; left out when both passed")
    img1_quality: FaceQuality | None = None
    img2_quality: FaceQuality | None = None


class FaceAnalysis(BaseModel):
    region: FacialArea
    face_confidence: float
    age: float | None = None
    dominant_gender: str | None = None
    gender: dict[str, float] | None = None
    dominant_emotion: str | None = None
    emotion: dict[str, float] | None = None
    dominant_race: str | None = None
    race: dict[str, float] | None = None
    is_real: bool | None = None
    antispoof_score: float | None = None
    quality: FaceQuality | None = None


class AnalyzeResponse(BaseModel):
    faces: list[FaceAnalysis]
    unsupported_actions: list[str] | None = Field(
        None, description="actions asked for that no model here computes (emotion, race): "
                          "their fields stay empty")


class EmbedResponse(BaseModel):
    embedding: list[float]
    dim: int
    model: str


class RegisterResponse(BaseModel):
    id: str = Field(description="the record's id (with imgs: the first record's)")
    name: str
    registered_at: str
    person_id: str = Field(description="the person the photo(s) belong to")
    ids: list[str] | None = Field(None, description="with imgs: every record's id, in the "
                                                    "order of imgs (one id with template)")
    quality: list[FaceQuality] | None = Field(None, description="each photo's face quality, "
                                                                "in the order sent")


class IdentifyMatch(BaseModel):
    id: str = Field(description="the face's id (group_by person: the person's nearest face)")
    name: str
    labels: dict[str, str] = Field(description="the face's labels (group_by person: those of "
                                               "the nearest face)")
    distance: float
    confidence: float
    match: bool
    person_id: str
    faces: int | None = Field(None, description="group_by person: the person's faces")


class IdentifyResponse(BaseModel):
    matches: list[IdentifyMatch]
    threshold: float = Field(description="the cosine distance `match` was decided with")
    match_policy: Literal["threshold", "fpir"]
    threshold_source: Literal["request", "identify_threshold", "calibration", "verify_threshold",
                              "fpir"] = Field(
        description="request; the model's identify_threshold option; its recognizer's calibrated "
                    "default; its verify threshold (recognizer not calibrated); or derived for fpir")
    fpir: float | None = Field(None, description="match_policy fpir: the target it was derived for")
    gallery_size: int | None = Field(None, description="match_policy fpir: people of this "
                                                       "model in the store it was derived for")
    quality: FaceQuality | None = Field(None, description="the probe face's quality")


class Detection(BaseModel):
    x: float
    y: float
    width: float
    height: float
    class_name: str
    confidence: float
    quality: FaceQuality | None = Field(
        None, description="an extra field beside LocalAI's; faces at or above the model's own "
                          "detection floor only (not those a lower `threshold` adds)")


class DetectionResponse(BaseModel):
    detections: list[Detection]


class RegistryItem(BaseModel):
    id: str
    person_id: str
    name: str
    labels: dict[str, str]
    model: str
    registered_at: str


class RegistryResponse(BaseModel):
    items: list[RegistryItem]
    total: int = Field(description="faces that match the filters")
    people: int = Field(description="people those faces belong to")


class PersonFace(BaseModel):
    id: str
    labels: dict[str, str]
    registered_at: str


class Person(BaseModel):
    person_id: str
    name: str
    labels: dict[str, str]
    model: str
    created_at: str
    faces: int = Field(description="how many faces (registered photos) the person has")


class PersonDetail(Person):
    records: list[PersonFace] = Field(description="the person's faces, oldest first")


class PeopleResponse(BaseModel):
    items: list[Person]
    total: int


class PoolMember(BaseModel):
    address: str | None = Field(None, description="gRPC address")
    pid: int | None = Field(None, description="process id, for a backend the gateway started")
    in_pool: bool = Field(description="loaded, healthy and taking calls")
    in_flight: int = Field(description="calls waiting for an answer now")
    calls: int = Field(description="calls sent since the gateway started")
    starts: int | None = Field(None, description="times the gateway started it")


class ModelInfo(BaseModel):
    id: str
    object: str = "model"
    loaded: bool
    pid: int | None = Field(None, description="process id of a backend the gateway started "
                                              "(the pool's first)")
    address: str | None = Field(None, description="gRPC address of the model's (first) backend")
    backends: list[PoolMember] | None = Field(None, description="every backend of its pool")


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelInfo]


class ErrorDetail(BaseModel):
    code: int
    message: str
    type: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


MAX_REEMBED_BATCH = 1000  # crops per EmbedAligned call (the backend's limit)


class ReembedRequest(BaseModel):
    model_config = example(limit=64)

    model: str | None = ModelField
    store: str | None = StoreField
    limit: int = Field(64, ge=1, le=MAX_REEMBED_BATCH,
                       description="faces re-embedded by this call (one backend call); call "
                                   "again while `remaining` is above 0")


class ReembedResponse(BaseModel):
    model: str
    store: str
    recognizer: str = Field(description="fingerprint of the recognizer the model loads now")
    reembedded: int = Field(description="faces whose template this call rebuilt from its crop")
    remaining: int = Field(description="faces made by another recognizer that still have a "
                                       "crop: call again")
    without_crop: int = Field(description="faces made by another recognizer without a kept "
                                          "crop: register them again (forget them first)")
    without_crop_ids: list[str] = Field(description=f"their ids, the first {MAX_LIST_LIMIT}")


# -- group photos and clustering (routes/groups.py) -------------------------------

class IdentifiedFace(BaseModel):
    facial_area: FacialArea
    person_id: str | None = Field(description="the person given to this face; null: unknown")
    name: str | None
    distance: float | None = Field(description="to that person; unknown: to the nearest person "
                                               "not given to another face (null: none)")
    confidence: float | None
    match: bool
    matches: list[IdentifyMatch] = Field(description="the face's nearest people (by person)")

    def shown(self) -> dict:
        """As answered: an unknown face says null, its matches leave out what is not set."""
        return {**self.model_dump(exclude={"matches"}),
                "matches": [m.model_dump(exclude_none=True) for m in self.matches]}


class ClusterRequest(BaseModel):
    model_config = example(imgs=[JPEG, JPEG])

    model: str | None = ModelField
    imgs: list[str] = Field(min_length=1, max_length=MAX_CLUSTER_IMAGES,
                            description=f"the photos, every face of each clustered "
                                        f"({ImageDoc}), at most {MAX_CLUSTER_IMAGES}")
    threshold: float | None = Field(None, ge=0, le=2, allow_inf_nan=False,
                                    description="cosine distance at which the average-linkage "
                                                "tree is cut; 0 or omitted: the measured "
                                                "default")


class ClusterFace(BaseModel):
    img: int = Field(description="index of the photo in imgs")
    facial_area: FacialArea


class FaceCluster(BaseModel):
    faces: list[ClusterFace]
    representative: ClusterFace = Field(description="the face nearest the cluster's mean")


class ClusterResponse(BaseModel):
    clusters: list[FaceCluster] = Field(description="groups of two or more faces, largest first")
    unclustered: list[ClusterFace] = Field(description="faces like no other face sent")
    threshold: float = Field(description="the cut distance used")
    model: str
