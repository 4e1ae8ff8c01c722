"""Face quality in the routes' answers, and the refusals of faces below a gate or a bound."""
from face_contract.errors import InvalidInput

from .. import schemas as s
from ..quality import reasons
from .common import _f


def assessed(q, gate: str) -> s.FaceQuality:
    """A backend's Quality (face_extras.proto) as the gateway answers it, against `gate`."""
    components = {name: _f(value) for name, value in sorted(q.components.items())}
    return s.FaceQuality(score=round(_f(q.score), 1), components=components,
                         reasons=reasons(q.score, components, gate))


def refuse_below_gate(quality: s.FaceQuality, field: str, gate: str) -> None:
    """400 naming the photo and every reason when the face is below the gate."""
    if quality.reasons:
        raise InvalidInput(f"the face in {field} is below the quality gate {gate}: "
                           + "; ".join(quality.reasons))


def refuse_below(quality: s.FaceQuality, field: str, min_quality: float | None) -> None:
    """400 when a probe's score is below the request's min_quality, with the reasons."""
    if min_quality is not None and quality.score < min_quality:
        why = "; ".join([f"LOW_FACE_QUALITY: quality {quality.score:.0f}, needs at least "
                         f"{min_quality:g}", *quality.reasons])
        raise InvalidInput(f"the face in {field} is below min_quality: {why}")
