"""verifier imports onnx2torch and loads ONNX models where torchvision is not installed.

The check runs in a fresh interpreter whose first ``sys.meta_path`` finder refuses torchvision, so it holds
in an environment that has torchvision too (onnx2torch is imported only once per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[2]

_SCRIPT = """
import json, sys

class NoTorchvision:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torchvision":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoTorchvision())

import numpy as np
import onnxruntime
import torch

import verifier
from onnx2torch.node_converters import nms, roialign

report = {}
model = verifier.load("models/test_small.onnx")
x = torch.linspace(-2.0, 2.0, 7).reshape(7, 1)
session = onnxruntime.InferenceSession("models/test_small.onnx", providers=["CPUExecutionProvider"])
want = np.stack([session.run(None, {"X_0": row})[0] for row in x.numpy()])
report["outputs"] = [model(x).flatten().tolist(), want.flatten().tolist()]
report["torchvision_visible"] = "torchvision" in sys.modules
try:
    import torchvision
except ModuleNotFoundError:
    pass
else:
    report["torchvision_visible"] = True
for name, call in [("nms", lambda: nms.torchvision.ops.nms(None, None, 0.5)),
                   ("roi_align", lambda: roialign.roi_align(None, None, 1)),
                   ("load", lambda: verifier.load(sys.argv[1]))]:
    try:
        call()
    except verifier.VerifierError as exc:
        report[name] = [type(exc).__name__, str(exc)]
print(json.dumps(report))
"""


def _roi_align_model(path: Path) -> None:
    """x [1, 1, 4, 4] -> RoiAlign over one constant region: an operator onnx2torch runs with torchvision."""
    rois = numpy_helper.from_array(np.array([[0.0, 0.0, 3.0, 3.0]], np.float32), "rois")
    index = numpy_helper.from_array(np.array([0], np.int64), "index")
    node = helper.make_node("RoiAlign", ["x", "rois", "index"], ["y"], name="/roi", output_height=2,
                            output_width=2)  # fmt: skip
    graph = helper.make_graph(
        [node],
        "roi",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])],
        [rois, index],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def test_loads_without_torchvision_and_the_stand_in_names_what_is_missing(tmp_path):
    _roi_align_model(tmp_path / "roi.onnx")
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path / "roi.onnx")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    np.testing.assert_allclose(*report["outputs"], rtol=1e-5, atol=1e-6)  # loaded, computes as onnxruntime
    assert not report["torchvision_visible"]  # the stand-in did not outlive onnx2torch's import
    for function, operator in [("nms", "NonMaxSuppression"), ("roi_align", "RoiAlign")]:
        kind, message = report[function]
        assert kind == "ModelLoadError"
        assert f"ONNX {operator} runs torchvision.ops.{function}" in message
        assert "torchvision is not installed" in message
    # RoiAlign has no bound rules, with or without torchvision: the load reports it like any such operator
    assert report["load"] == ["UnsupportedOperatorError", "unsupported operators: RoiAlign (node /roi)"]
