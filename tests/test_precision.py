"""korasr.precision's graph plumbing on small hand-made ONNX graphs (the exported graphs: tests/test_export.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from korasr.precision import piece_error_rate, toposort
from korasr.precision import session as ort_session


def _graph(nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])


def test_toposort_orders_nodes_the_checker_rejects(tmp_path):
    nodes = [  # y = relu(x + x) * 2, written consumers first
        helper.make_node("Mul", ["r", "two"], ["y"], name="mul"),
        helper.make_node("Relu", ["s"], ["r"], name="relu"),
        helper.make_node(
            "Constant", [], ["two"], name="two", value=helper.make_tensor("t", TensorProto.FLOAT, [], [2.0])
        ),
        helper.make_node("Add", ["x", "x"], ["s"], name="add"),
    ]
    model = _graph(nodes)
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(model)
    toposort(model.graph)
    onnx.checker.check_model(model)
    names = [n.name for n in model.graph.node]
    assert names.index("add") < names.index("relu") < names.index("mul") and names.index("two") < names.index("mul")
    onnx.save(model, str(tmp_path / "m.onnx"))
    out = ort_session(tmp_path / "m.onnx").run(None, {"x": np.array([-1.0, 3.0], dtype=np.float32)})[0]
    assert out.tolist() == [0.0, 12.0]


def test_toposort_names_a_cycle():
    model = _graph([helper.make_node("Relu", ["y"], ["z"], name="a"), helper.make_node("Relu", ["z"], ["y"], name="b")])
    with pytest.raises(ValueError, match="cycle or a dangling input near node 'a'"):
        toposort(model.graph)


def test_piece_error_rate_counts_edits_against_the_reference():
    assert piece_error_rate([[1, 2, 3, 4]], [[1, 2, 3, 4]]) == 0.0
    assert piece_error_rate([[1, 2, 3, 4], [5]], [[1, 9, 3], [5, 6]]) == pytest.approx(100 * 3 / 5)  # sub, del, ins
    assert piece_error_rate([[]], [[]]) == 0.0
