"""The ``tflite`` backend: LiteRT with its default delegate (XNNPACK) and a thread count.

Runs ``.tflite`` files as given (float or quantized; the official 1.0_224 quantized model in two pieces is
chained: the extractor's AvgPool output feeds the head, whose unused ``input`` is zeros), and float models
exported from canonical weights (``.h5``, checkpoints, canonical folders).
"""

from __future__ import annotations

import numpy as np

from requestflow.board.backends.base import Backend, imagenet_scores, to_float_input
from requestflow.errors import UserError


class TFLiteBackend(Backend):
    name = "tflite"

    def load(self) -> None:
        from requestflow.board.importers import tflite_interpreter_class

        interpreter_class, _ = tflite_interpreter_class()
        self._library = interpreter_class.__module__.split(".")[0]
        files = self._model_files()
        self._pieces = []
        for path in files:
            interpreter = interpreter_class(model_path=str(path), num_threads=self.threads)
            self._pieces.append(interpreter)
        if len(self._pieces) == 2:
            head_first = any("avgpool" in d["name"].lower() for d in self._pieces[0].get_input_details())
            if head_first:
                self._pieces.reverse()
        for interpreter in self._pieces:
            for detail in interpreter.get_input_details():
                shape = list(detail["shape"])
                if shape[0] != self.batch_size:
                    interpreter.resize_tensor_input(detail["index"], [self.batch_size, *shape[1:]])
            try:
                interpreter.allocate_tensors()
            except RuntimeError as exc:
                raise UserError(f"{files[0]}: cannot run at batch size {self.batch_size} "
                                f"({str(exc).splitlines()[0]})") from None
        first, last = self._pieces[0], self._pieces[-1]
        self._input = first.get_input_details()[0]
        self._output = last.get_output_details()[0]
        if len(self._pieces) == 2:
            head_inputs = last.get_input_details()
            self._link = (first.get_output_details()[0]["index"],
                          next(d["index"] for d in head_inputs if "avgpool" in d["name"].lower()))
            for detail in head_inputs:
                if detail["index"] != self._link[1]:
                    last.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
        self._files = files
        scale, zero_point = self._output["quantization"]
        self._dequantize = (scale, zero_point) if self._output["dtype"] != np.float32 and scale else None
        self.set_input(np.zeros((self.batch_size, *self._input["shape"][1:]), np.uint8))
        self.invoke()

    def _model_files(self):
        if self.weights.format == "tflite":
            return self.weights.paths
        from requestflow.board.backends.tf_network import export_tflite
        return [export_tflite(self.weights.canonical_for(self.model))]

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self._input["dtype"])

    @property
    def precision(self) -> str:
        return "fp32" if self.input_dtype == np.float32 else self.input_dtype.name

    @property
    def classes(self) -> int:
        return int(self._output["shape"][-1])

    def set_input(self, batch: np.ndarray) -> None:
        if self.input_dtype == np.float32:
            batch = to_float_input(batch)
        elif self.input_dtype == np.int8:  # quantize the float input with the model's own parameters
            scale, zero_point = self._input["quantization"]
            batch = np.clip(np.round(to_float_input(batch) / scale) + zero_point, -128, 127).astype(np.int8)
        self._pieces[0].set_tensor(self._input["index"], batch)

    def invoke(self) -> None:
        first = self._pieces[0]
        first.invoke()
        if len(self._pieces) == 2:
            head = self._pieces[1]
            head.set_tensor(self._link[1], first.get_tensor(self._link[0]))
            head.invoke()

    def scores(self) -> np.ndarray:
        out = self._pieces[-1].get_tensor(self._output["index"])
        if self._dequantize:
            scale, zero_point = self._dequantize
            out = (out.astype(np.float32) - zero_point) * np.float32(scale)
        return imagenet_scores(out.astype(np.float32, copy=False))

    def info(self) -> dict:
        if self._library == "ai_edge_litert":
            from importlib.metadata import version
            library_version = version("ai-edge-litert")
        else:
            from requestflow.board.tensorflow_import import import_tensorflow
            tf = import_tensorflow()
            library_version = tf.__version__
        from requestflow.board.runtime import annotate
        return annotate({"name": self.name, "version": library_version, "library": self._library,
                         "variant": {"delegate": "default (XNNPACK)", "pieces": len(self._pieces),
                                     "exported_from_canonical": self.weights.format != "tflite"},
                         "threads": self.threads})

    def close(self) -> None:
        self._pieces = []
