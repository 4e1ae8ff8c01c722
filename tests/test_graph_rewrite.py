"""The load-time PRelu split gives the same outputs as onnxruntime's PRelu."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from backend.models.graph import split_prelu
from support import MODELS, needs_shared


def run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def test_split_prelu_matches_prelu_for_any_slope():
    slopes = np.array([-2.5, -0.1, 0.0, 0.25, 1.0, 3.0], np.float32).reshape(6, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("PRelu", ["x", "slope"], ["y"])], "prelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 4, 4])],
        initializer=[numpy_helper.from_array(slopes, "slope")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    x = np.random.default_rng(0).standard_normal((1, 6, 4, 4)).astype(np.float32)
    expected = run(model, {"x": x})
    assert split_prelu(model)
    assert not any(n.op_type == "PRelu" for n in model.graph.node)
    assert np.array_equal(run(model, {"x": x}), expected)
    assert not split_prelu(model)  # nothing left to rewrite


@needs_shared
def test_split_prelu_on_the_real_recognizer():
    path = MODELS / "recognizer-mobilefacenet-paddlex" / "MobileFaceNet.onnx"
    original, rewritten = onnx.load(path), onnx.load(path)
    assert split_prelu(rewritten)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 112, 112)).astype(np.float32)
    assert np.allclose(run(rewritten, {"x": x}), run(original, {"x": x}), atol=1e-5)
