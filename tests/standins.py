"""Small ONNX stand-ins for weights that are not in ../shared/models.

They have the real models' input/output signatures (names, shapes) and compute a
fixed random projection of the pooled face crop: enough to exercise the code
paths that load them, never a source of accuracy figures.
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build_recognizer_standin(path, dim: int, input_name: str, output_name: str,
                             batch=1, seed: int = 0) -> str:
    """[N, 3, 112, 112] -> [N, dim]: 8x8 average pooling, flatten, a random linear map."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.standard_normal((3 * 14 * 14, dim)).astype(np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(dim, np.float32), "b")
    nodes = [
        helper.make_node("AveragePool", [input_name], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w", "b"], [output_name]),
    ]
    graph = helper.make_graph(
        nodes, "recognizer_standin",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 3, 112, 112])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, dim])],
        initializer=[weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def build_sface_standin(path) -> str:
    """SFace's signature: data[1, 3, 112, 112] -> fc1[1, 128]."""
    return build_recognizer_standin(path, 128, "data", "fc1", batch=1, seed=1)


def build_arcface512_standin(path) -> str:
    """w600k_r50 / w600k_mbf's signature: input.1[N, 3, 112, 112] -> 683[N, 512]."""
    return build_recognizer_standin(path, 512, "input.1", "683", batch="N", seed=2)


def build_rotated_recognizer(source, path, seed: int = 0) -> str:
    """A real recognizer followed by a fixed random rotation of its embedding space: as accurate
    as `source` (a rotation keeps every cosine distance), yet its embeddings are not comparable
    with `source`'s, as another recognizer's are not."""
    model = onnx.load(str(source))
    graph = model.graph
    [output] = graph.output
    dim = output.type.tensor_type.shape.dim[-1].dim_value
    rotation, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    for node in graph.node:  # the network now ends in a tensor the rotation reads
        node.output[:] = ["unrotated" if name == output.name else name for name in node.output]
    graph.initializer.append(numpy_helper.from_array(rotation.astype(np.float32), "rotation"))
    graph.node.append(helper.make_node("MatMul", ["unrotated", "rotation"], [output.name]))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)
