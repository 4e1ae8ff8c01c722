"""Model classes, one per file, and the router that picks a class from an ONNX signature."""
import os

import onnx

from face_contract.errors import ModelLoadError
from .arcface import ArcFace, has_embedded_normalisation
from .genderage import GenderAge
from .minifasnet import MiniFASNet
from .scrfd import SCRFD

# Landmark heads ship in the buffalo packs; the pipeline does not use them.
LANDMARK_INPUT_SIZE = 192


def _first_ops(path: str) -> list[str]:
    graph = onnx.load(path, load_external_data=False).graph
    return [node.op_type for node in graph.node[:3]]


def describe(session) -> str:
    ins = ", ".join(f"{i.name}{list(i.shape)}" for i in session.get_inputs())
    outs = ", ".join(f"{o.name}{list(o.shape)}" for o in session.get_outputs()[:4])
    more = len(session.get_outputs()) - 4
    return f"inputs {ins}; outputs {outs}{f' (+{more} more)' if more > 0 else ''}"


def get_model(path: str, session_factory, crop_scale: float = 2.7):
    """The model class for an ONNX file, chosen by its inputs and outputs.

    Returns None for heads the pipeline does not use (landmarks); raises
    ModelLoadError for a file that matches no known face model.
    """
    if not os.path.isfile(path):
        raise ModelLoadError(f"model file not found: {path}")
    try:
        session = session_factory(path)
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a loadable ONNX model ({exc})") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = inputs[0].shape
    names = " ".join(o.name for o in outputs)
    if len(inputs) == 1 and len(shape) == 4:
        side = shape[2] if isinstance(shape[2], int) else None
        if len(outputs) == 9:  # SCRFD with keypoints: score, box, landmarks at 3 strides
            return SCRFD(path, session)
        if len(outputs) == 1 and side == 112 and shape[3] == 112:
            return ArcFace(path, session, has_embedded_normalisation(_first_ops(path)))
        if len(outputs) == 1 and side == 96 and outputs[0].shape[-1] == 3:
            return GenderAge(path, session, has_embedded_normalisation(_first_ops(path)))
        if len(outputs) == 1 and side == 80 and outputs[0].shape[-1] == 3:
            return MiniFASNet(path, session, crop_scale)
        if side == LANDMARK_INPUT_SIZE:
            return None
    hint = " (a YuNet detector: use engine:opencv)" if "obj_8" in names else ""
    raise ModelLoadError(f"{path}: not a known face model{hint}: {describe(session)}")
