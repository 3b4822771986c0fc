"""ONNX export of trained networks and running them through onnxruntime."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from impasto.errors import WeightsError, WeightsUnavailableError

META_KEY = "impasto"


def export(module: nn.Module, example: tuple[Tensor, ...], path: str | os.PathLike[str], meta: dict[str, Any],
           input_names: list[str], dynamic: dict[str, dict[int, str]]) -> Path:
    """Trace ``module`` on ``example`` into an ONNX file (atomically) with ``meta`` as JSON metadata."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's constant-folding chatter
            torch.onnx.export(module, example, tmp, dynamo=False, input_names=input_names, output_names=["output"],
                              dynamic_axes=dynamic, opset_version=17)
        model = onnx.load(tmp)
        entry = model.metadata_props.add()
        entry.key, entry.value = META_KEY, json.dumps(meta)
        onnx.save(model, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


class OnnxNetwork:
    """An exported network run by onnxruntime on CPU; call it with float32 tensors."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise WeightsUnavailableError("running .onnx models needs onnxruntime: pip install onnxruntime") from exc
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise WeightsError(f"{self.path} is not a loadable ONNX model: {exc}") from exc
        raw = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)
        if raw is None:
            raise WeightsError(f"{self.path} is an ONNX model but not one exported by impasto (no '{META_KEY}' metadata)")
        self.meta: dict[str, Any] = json.loads(raw)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs: Tensor) -> Tensor:
        feed = {name: np.ascontiguousarray(t.detach().float().numpy()) for name, t in zip(self.input_names, inputs, strict=True)}
        return torch.from_numpy(self.session.run(None, feed)[0])
