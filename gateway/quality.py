"""The quality gate: the bounds a face must meet at each level, and the reasons (in AWS
Rekognition's vocabulary, with the measured value and the bound) for the ones it misses.

The one place the bounds live. Measured on lfw_grey and on its photos degraded on purpose
(bench/quality.py): at medium, the default, the gate refuses at most 3% of lfw_grey's photos
and at least 90% of the degraded ones.
"""
import dataclasses

from face_contract.quality import DEFAULT_GATE


@dataclasses.dataclass(frozen=True)
class Bounds:
    inter_eye_px: float  # at least
    sharpness: float     # at least (variance of the Laplacian of the aligned crop)
    brightness: float    # at least (mean grey level of the aligned crop's skin, 0-255)
    pose_deg: float      # at most, |yaw| and |pitch|
    blockiness: float    # at most (JPEG blocking over the face box; about 1.2 in a fair JPEG)
    score: float         # at least, the unified 0-100 quality


GATES = {
    "low": Bounds(inter_eye_px=20, sharpness=20, brightness=50, pose_deg=85, blockiness=2.5,
                  score=5),
    "medium": Bounds(inter_eye_px=28, sharpness=36, brightness=75, pose_deg=75, blockiness=2.0,
                     score=10),
    "high": Bounds(inter_eye_px=40, sharpness=70, brightness=90, pose_deg=40, blockiness=1.6,
                   score=30),
}


def reasons(score: float, components: dict[str, float], gate: str) -> list[str]:
    """What keeps the face below `gate` (none at "off"), each with its value and bound."""
    if gate == "off":
        return []
    b, c = GATES[gate], components
    found = []
    if c["inter_eye_px"] < b.inter_eye_px:
        found.append(f"SMALL_FACE: inter-eye distance {c['inter_eye_px']:.0f} px, "
                     f"needs at least {b.inter_eye_px:.0f}")
    if c["sharpness"] < b.sharpness:
        found.append(f"LOW_SHARPNESS: sharpness {c['sharpness']:.0f}, "
                     f"needs at least {b.sharpness:.0f}")
    if c["brightness"] < b.brightness:
        found.append(f"LOW_BRIGHTNESS: brightness {c['brightness']:.0f}, "
                     f"needs at least {b.brightness:.0f}")
    turned = max(("yaw", "pitch"), key=lambda k: abs(c[k]))
    if abs(c[turned]) > b.pose_deg:
        found.append(f"EXTREME_POSE: {turned} {c[turned]:.0f} degrees, "
                     f"needs at most {b.pose_deg:.0f}")
    if c["blockiness"] > b.blockiness:
        found.append(f"LOW_FACE_QUALITY: JPEG blockiness {c['blockiness']:.1f}, "
                     f"needs at most {b.blockiness:.1f}")
    if score < b.score:
        found.append(f"LOW_FACE_QUALITY: quality {score:.0f}, needs at least {b.score:.0f}")
    return found


def gate_of(config, requested: str | None) -> str:
    """The request's gate, else the model's quality_gate option, else the default."""
    option = config.option("quality_gate") if config is not None else None
    return requested or option or DEFAULT_GATE
