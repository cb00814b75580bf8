"""Will a SavedModel load in TF Serving? What can be checked without the
``tensorflow/serving`` image: the ``serve`` tag, each signature's method name
and TF Serving's rules for it, no Python-only ops (``PyFunc`` and kin cannot
run outside a Python process), and every op registered in this TF build (TF
2.16, the version the ``tensorflow/serving:2.16.1`` image links)."""

from __future__ import annotations

import os
from typing import Dict, List, Set

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry

from pipeline.serving.versions import CLASSIFY_METHOD, PREDICT_METHOD

PYTHON_ONLY_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})
REGRESS_METHOD = "tensorflow/serving/regress"
# The signatures models/export.py writes, and their methods.
FERMTL_SIGNATURES = {"serving_default": PREDICT_METHOD, "serving_examples": PREDICT_METHOD,
                     "classify": CLASSIFY_METHOD}
INIT_OP_SIGNATURE = "__saved_model_init_op"   # TF2's table/variable initialiser, not served


def read_saved_model(path: str) -> saved_model_pb2.SavedModel:
    proto = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def graph_ops(meta_graph) -> Set[str]:
    """Every op type in the graph and its function library (calls of library
    functions excluded: they are not ops)."""
    library = meta_graph.graph_def.library
    functions = {f.signature.name for f in library.function}
    ops = {n.op for n in meta_graph.graph_def.node}
    for fn in library.function:
        ops.update(n.op for n in fn.node_def)
    return ops - functions


def _signature_problems(name: str, sig) -> List[str]:
    if sig.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
        return [f"signature {name!r}: unknown method_name {sig.method_name!r}"]
    if sig.method_name == PREDICT_METHOD:
        return [] if sig.inputs and sig.outputs else \
            [f"signature {name!r}: a predict signature needs inputs and outputs"]
    problems = []
    if list(sig.inputs) != ["inputs"] or sig.inputs["inputs"].dtype != tf.string.as_datatype_enum:
        problems.append(f"signature {name!r}: {sig.method_name} takes one DT_STRING input "
                        "named 'inputs' (serialized tf.Example)")
    allowed = {"classes": tf.string, "scores": tf.float32} if sig.method_name == \
        CLASSIFY_METHOD else {"outputs": tf.float32}
    for key, info in sig.outputs.items():
        if key not in allowed or info.dtype != allowed[key].as_datatype_enum:
            problems.append(f"signature {name!r}: output {key!r} is not one of "
                            f"{ {k: v.name for k, v in allowed.items()} }")
    if not sig.outputs:
        problems.append(f"signature {name!r}: no outputs")
    return problems


def servable_problems(path: str, required: Dict[str, str] = None) -> List[str]:
    """What would stop TF Serving from loading or serving ``path`` (empty: none
    found). ``required`` maps signature names to the method each must have."""
    proto = read_saved_model(path)
    serve = [mg for mg in proto.meta_graphs if "serve" in mg.meta_info_def.tags]
    if not serve:
        return ["no meta graph tagged 'serve'"]
    meta_graph = serve[0]
    problems = []
    sigs = meta_graph.signature_def
    for name, method in (required or {}).items():
        if name not in sigs:
            problems.append(f"missing signature {name!r}")
        elif sigs[name].method_name != method:
            problems.append(f"signature {name!r} has method {sigs[name].method_name!r}, "
                            f"expected {method!r}")
    for name, sig in sigs.items():
        if name != INIT_OP_SIGNATURE:
            problems += _signature_problems(name, sig)
    ops = graph_ops(meta_graph)
    problems += [f"Python-only op {op}" for op in sorted(ops & PYTHON_ONLY_OPS)]
    problems += [f"op {op} is not registered in TF {tf.__version__}"
                 for op in sorted(ops) if op_def_registry.get(op) is None]
    return problems
