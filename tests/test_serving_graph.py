"""The exported SavedModel of every method would load in TF Serving 2.16:
``serve`` tag, signatures with TF Serving's method names and shapes of
inputs/outputs, no Python-only ops, every op registered in TF (the graph
walk of pipeline.serving.graph_check). The Pusher's model: test_pipeline.py."""

import pytest

from models.registry import method_names

# fersnet (15 s on 2 cores) in make test-all; tests/test_fersnet.py exports and
# serves it in CI.
SLOW = {"fersnet"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in method_names()])
def test_every_method_exports_a_servable_graph(name, tmp_path):
    from models.export import export_saved_model
    from models.registry import get_method
    from pipeline.serving.graph_check import (FERMTL_SIGNATURES, graph_ops, read_saved_model,
                                              servable_problems)

    method = get_method(name)
    cfg = method.config("small")
    cfg["schedule_steps"] = 1          # set by the training core before build
    export_saved_model(method, method.build(cfg), cfg, str(tmp_path / "1"))
    assert servable_problems(str(tmp_path / "1"), FERMTL_SIGNATURES) == []
    ops = graph_ops(read_saved_model(str(tmp_path / "1")).meta_graphs[0])
    assert {"DecodeImage", "ParseExampleV2"} & ops and "StatefulPartitionedCall" in ops


def test_the_walk_finds_python_ops_and_wrong_methods(tmp_path):
    """A graph with ``tf.py_function`` and a mislabelled classify signature is refused."""
    import tensorflow as tf

    from models.export import set_method_name
    from pipeline.serving.graph_check import servable_problems

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def double(self, x):
            return {"y": tf.py_function(lambda v: v * 2, [x], tf.float32)}

    m = Module()
    tf.saved_model.save(m, str(tmp_path), signatures={"serving_default": m.double})
    set_method_name(str(tmp_path), "serving_default", "tensorflow/serving/classify")
    problems = servable_problems(str(tmp_path), {"classify": "tensorflow/serving/classify"})
    assert "missing signature 'classify'" in problems
    assert "Python-only op EagerPyFunc" in problems
    assert any("one DT_STRING input named 'inputs'" in p for p in problems)
