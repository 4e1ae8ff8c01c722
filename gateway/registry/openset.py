"""Open-set identify: which distance counts as `match: true`, and why.

A verification threshold balances errors over one comparison; identify compares a probe
with every enrolled face, so a stranger's chance of matching someone grows with the
gallery. Two policies:

- `threshold` (default): the request's `threshold`, else the model's `identify_threshold`
  option, else the calibrated default of its recognizer (impostor_quantiles.json, a fixed
  false-match rate per comparison), else its verify threshold (recognizers not calibrated).
- `fpir`: the per-comparison false-match rate f that keeps the chance of a stranger matching
  anyone of N enrolled people at the target, 1 - (1 - f)^N = fpir, turned into a distance
  with the recognizer's impostor quantile table (`bench/calibrate_identify.py` measures it).
"""
import dataclasses
import json
import math
import pathlib

import numpy as np

from face_contract.errors import InvalidInput
from gallery.configs import ModelConfig

from ..pool.backends import default_threshold

TABLES = json.loads((pathlib.Path(__file__).with_name("impostor_quantiles.json")).read_text())
POLICIES = ("threshold", "fpir")
DEFAULT_FPIR = 0.01
# Recognizer file stems of the insightface packs, for configs that name a pack.
PACK_RECOGNIZERS = {"buffalo_l": "w600k_r50", "buffalo_m": "w600k_r50", "antelopev2": "glintr100",
                    "buffalo_s": "w600k_mbf", "buffalo_sc": "w600k_mbf"}


@dataclasses.dataclass(frozen=True)
class Decision:
    threshold: float
    policy: str
    source: str  # request, identify_threshold, calibration, verify_threshold, fpir
    fpir: float | None = None
    gallery_size: int | None = None


def recognizer(config: ModelConfig | None) -> str | None:
    """The recognizer file stem a config loads: the key of its impostor table.

    By file name, as the backend's verify defaults are: another network saved under a
    calibrated name needs its own `identify_threshold` (and no fpir policy)."""
    if config is None:
        return None
    if config.option("recognizer_onnx"):
        return pathlib.Path(config.option("recognizer_onnx")).stem
    if config.option("engine") in ("opencv", "onnx_direct"):
        return None  # such a config always names its recognizer_onnx
    return PACK_RECOGNIZERS.get(config.option("model_pack", "buffalo_l"))


def _fixed(config: ModelConfig | None) -> Decision:
    explicit = config.number("identify_threshold") if config is not None else None
    if explicit is not None:
        return Decision(explicit, "threshold", "identify_threshold")
    table = TABLES.get(recognizer(config) or "")
    if table is not None:
        return Decision(table["identify_threshold"], "threshold", "calibration")
    return Decision(default_threshold(config), "threshold", "verify_threshold")


def fpir_threshold(quantiles: list[list[float]], fpir: float, gallery_size: int) -> float:
    """The impostor distance at the per-comparison rate that keeps FPIR at `fpir` for N people.

    Interpolated in log(rate) between the table's rungs; beyond its rarest rung (a gallery
    larger than the calibration can speak for) the rarest rung's distance is used.
    """
    per_comparison = -math.expm1(math.log1p(-fpir) / max(gallery_size, 1))
    rates, distances = np.log10([q[0] for q in quantiles]), [q[1] for q in quantiles]
    return float(np.interp(math.log10(per_comparison), rates, distances))


def decide(config: ModelConfig | None, model: str, threshold: float | None, policy: str | None,
           fpir: float | None, gallery_size) -> Decision:
    """The threshold identify applies; `gallery_size()` is called only for the fpir policy."""
    policy = policy or ("fpir" if fpir is not None else None)
    if threshold:
        if policy == "fpir":
            raise InvalidInput("give either threshold or match_policy fpir, not both")
        return Decision(threshold, "threshold", "request")
    policy = policy or (config.option("match_policy") if config is not None else None) or "threshold"
    if policy not in POLICIES:
        raise InvalidInput(f"match_policy '{policy}' of model '{model}' is unknown: use threshold "
                           f"or fpir")
    if policy == "threshold":
        if fpir is not None:
            raise InvalidInput("fpir needs match_policy fpir")
        return _fixed(config)
    table = TABLES.get(recognizer(config) or "")
    if table is None:
        raise InvalidInput(f"match_policy fpir needs an impostor calibration of the recognizer of "
                           f"model '{model}'; calibrated: {', '.join(sorted(TABLES))}")
    target = fpir if fpir is not None else (config.number("fpir") if config is not None else None) or DEFAULT_FPIR
    size = gallery_size()
    return Decision(fpir_threshold(table["quantiles"], target, size), "fpir", "fpir",
                    fpir=target, gallery_size=size)
