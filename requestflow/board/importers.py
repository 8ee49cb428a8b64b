"""Importers of real MobileNets-v1 weights into the canonical format (``weights.py``).

- TFLite flatbuffers, float or quantized (uint8 / int8, per-tensor or per-channel): quantized tensors are
  dequantized (``scale * (q - zero_point)``; batch norm is already folded in these files). The official 1.0_224
  quantized model published in two pieces (embedding extractor + head) is imported from both files together.
- Keras ``.h5`` weights (``keras.applications.MobileNet``), full-model or weights-only files: batch norm folded.
- TF-slim checkpoints (``mobilenet_v1_<w>_<r>.ckpt``): batch norm folded.

Each importer checks every tensor's shape against the chosen config and names the layer when one does not fit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from requestflow.board.catalogue import ModelConfig
from requestflow.board.files import sha256_file
from requestflow.board.weights import CanonicalWeights, fold_batch_norm, is_canonical, load_canonical
from requestflow.errors import UserError

KERAS_BN_EPSILON = 1e-3  # keras.applications.MobileNet
SLIM_BN_EPSILON = 1e-3  # TF-slim mobilenet_v1_arg_scope


def _layer_names(model: ModelConfig) -> list[str]:
    return [layer.name for layer in model.layers()]


def detect_format(paths: list[Path]) -> str:
    """``tflite``, ``h5``, ``checkpoint`` or ``canonical``, from the files given."""
    if len(paths) == 1 and is_canonical(paths[0]):
        return "canonical"
    suffixes = {p.suffix.lower() for p in paths}
    if suffixes == {".tflite"}:
        return "tflite"
    if len(paths) == 1 and paths[0].suffix.lower() in (".h5", ".hdf5", ".keras"):
        return "h5"
    if len(paths) == 1 and (Path(f"{paths[0]}.index").is_file() or paths[0].suffix == ".index"):
        return "checkpoint"
    raise UserError(f"{' '.join(map(str, paths))}: not weights requestflow can read "
                    "(a .tflite file or the two 1.0_224 pieces, an .h5, a checkpoint prefix or a canonical folder)")


def source_sha256(paths: list[Path]) -> str:
    """The sha256 of the weights as given: the file's own, or of the pieces' hashes, sorted and joined (so the
    order in which the pieces are named does not change it)."""
    if len(paths) == 1 and paths[0].is_file() and paths[0].suffix != ".index":
        return sha256_file(paths[0])
    import hashlib
    files = []
    for p in (Path(str(p)[: -len(".index")]) if str(p).endswith(".index") else p for p in paths):
        if p.is_file():
            files.append(p)
        elif Path(f"{p}.index").is_file():  # checkpoint prefix: its index and data shards
            files.extend(sorted(p.parent.glob(f"{p.name}.*")))
    return hashlib.sha256("".join(sorted(sha256_file(f) for f in files)).encode()).hexdigest()


def import_weights(paths: list[str | os.PathLike], model: ModelConfig, release: str | None = None) -> CanonicalWeights:
    """Import weights of any supported format for ``model``."""
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists() and not Path(f"{p}.index").is_file():
            raise UserError(f"weights file {p} does not exist")
    kind = detect_format(paths)
    if kind == "canonical":
        return load_canonical(paths[0], model)
    importer = {"tflite": _import_tflite, "h5": _import_h5, "checkpoint": _import_checkpoint}[kind]
    tensors, classes, precision = importer(paths, model)
    source = {"path": [str(p.resolve()) for p in paths] if len(paths) > 1 else str(paths[0].resolve()),
              "sha256": source_sha256(paths), "format": kind, "precision": precision}
    if release:
        source["release"] = release
    return CanonicalWeights(model, classes, tensors, source)


# --- TFLite -------------------------------------------------------------------------------------------------------

def tflite_interpreter_class():
    """LiteRT's interpreter (``ai-edge-litert``), else TensorFlow's ``tf.lite.Interpreter``."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
        return Interpreter, OpResolverType
    except ImportError:
        pass
    try:
        from requestflow.board.tensorflow_import import import_tensorflow
        tf = import_tensorflow()
        return tf.lite.Interpreter, tf.lite.experimental.OpResolverType
    except (ImportError, AttributeError):
        raise UserError("no TFLite runtime: install ai-edge-litert (or tensorflow)") from None


def _open_tflite(path: Path):
    interpreter_class, resolver = tflite_interpreter_class()
    try:
        interpreter = interpreter_class(model_path=str(path),
                                        experimental_op_resolver_type=resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: not a readable .tflite model ({str(exc).splitlines()[0]})") from None
    return interpreter


def _dequantize(interpreter, detail) -> np.ndarray:
    value = interpreter.get_tensor(detail["index"])
    if value.dtype in (np.float32, np.float16):
        return value.astype(np.float32)
    q = detail["quantization_parameters"]
    scales, zero_points = np.asarray(q["scales"], np.float64), np.asarray(q["zero_points"], np.float64)
    if scales.size == 0:
        raise UserError(f"tensor {detail['name']} is {value.dtype} without quantization parameters")
    shape = [1] * value.ndim
    if scales.size > 1:
        shape[q["quantized_dimension"]] = -1
    return ((value.astype(np.float64) - zero_points.reshape(shape)) * scales.reshape(shape)).astype(np.float32)


def _tflite_convs(path: Path) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], set[str], bool]:
    """(op, weights, bias) of each convolution in execution order, the weights' dtypes, whether it is a head."""
    interpreter = _open_tflite(path)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # the public API has no op list; this one is stable across LiteRT 1-2
    produced_by_dequantize = {int(op["outputs"][0]): int(op["inputs"][0])
                              for op in ops if op["op_name"] == "DEQUANTIZE"}
    convs, dtypes = [], set()
    for op in ops:
        if op["op_name"] not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        w_index = produced_by_dequantize.get(int(op["inputs"][1]), int(op["inputs"][1]))
        w_detail, b_detail = details[w_index], details[int(op["inputs"][2])]
        dtypes.add(np.dtype(w_detail["dtype"]).name)
        convs.append((op["op_name"], _dequantize(interpreter, w_detail), _dequantize(interpreter, b_detail)))
    is_head = any("avgpool" in d["name"].lower() for d in interpreter.get_input_details())
    return convs, dtypes, is_head


def _to_canonical(op: str, weights: np.ndarray) -> np.ndarray:
    if op == "CONV_2D":  # OHWI -> HWIO
        return weights.transpose(1, 2, 3, 0)
    if op == "DEPTHWISE_CONV_2D":  # 1HW(C*M) -> HWC1
        return weights[0][..., None]
    return weights.T[None, None]  # FULLY_CONNECTED (O, I) -> 11IO


def _import_tflite(paths: list[Path], model: ModelConfig):
    pieces = [(p, *_tflite_convs(p)) for p in paths]
    if len(pieces) > 2:
        raise UserError("a TFLite model is one file, or two for the 1.0_224 extractor + head")
    pieces.sort(key=lambda piece: piece[3])  # extractor first, head last
    if len(pieces) == 2 and (pieces[0][3] or not pieces[1][3]):
        raise UserError(f"{paths[0]} and {paths[1]}: expected an embedding extractor and a head whose input "
                        "is the AvgPool tensor")
    convs = [conv for piece in pieces for conv in piece[1]]
    dtypes = set().union(*(piece[2] for piece in pieces))
    names = _layer_names(model)
    origin = " + ".join(str(p) for p in paths)
    if len(convs) != len(names):
        raise UserError(f"{origin}: {len(convs)} convolution layers, {model.id} has {len(names)}"
                        + (" (an embedding extractor needs its head file too)" if len(convs) == len(names) - 1 else ""))
    tensors = {}
    for name, (op, weights, bias) in zip(names, convs, strict=True):
        tensors[f"{name}.weights"] = _to_canonical(op, weights)
        tensors[f"{name}.bias"] = bias
    classes = tensors["logits.bias"].shape[0]
    precision = "fp32" if dtypes <= {"float32", "float16"} else ("int8" if "int8" in dtypes else "uint8")
    return tensors, classes, precision


# --- Keras .h5 ----------------------------------------------------------------------------------------------------

def _import_h5(paths: list[Path], model: ModelConfig):
    try:
        import h5py
    except ImportError:
        raise UserError("reading .h5 weights needs h5py (pip install h5py)") from None
    path = paths[0]
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise UserError(f"{path}: not a readable HDF5 file ({exc})") from None
    with handle:
        root = handle["model_weights"] if "model_weights" in handle else handle
        epsilon = _keras_bn_epsilon(handle)

        def get(layer: str, variable: str) -> np.ndarray:
            if layer not in root:
                raise UserError(f"{path}: no Keras layer {layer!r}; is this keras.applications.MobileNet?")
            found = []
            root[layer].visititems(lambda name, obj: found.append(obj) if name.split("/")[-1].split(":")[0] == variable
                                   and isinstance(obj, h5py.Dataset) else None)
            if not found:
                raise UserError(f"{path}: layer {layer!r} has no {variable!r}")
            return np.asarray(found[0])

        def bn(layer: str):
            return [get(f"{layer}_bn", v) for v in ("gamma", "beta", "moving_mean", "moving_variance")]

        tensors = {}
        tensors["conv0.weights"], tensors["conv0.bias"] = fold_batch_norm(get("conv1", "kernel"), *bn("conv1"),
                                                                          epsilon, 3)
        for i in range(1, 14):
            tensors[f"dw{i}.weights"], tensors[f"dw{i}.bias"] = fold_batch_norm(
                get(f"conv_dw_{i}", "depthwise_kernel"), *bn(f"conv_dw_{i}"), epsilon, 2)
            tensors[f"pw{i}.weights"], tensors[f"pw{i}.bias"] = fold_batch_norm(
                get(f"conv_pw_{i}", "kernel"), *bn(f"conv_pw_{i}"), epsilon, 3)
        tensors["logits.weights"] = get("conv_preds", "kernel").astype(np.float32)
        tensors["logits.bias"] = get("conv_preds", "bias").astype(np.float32)
    return tensors, tensors["logits.bias"].shape[0], "fp32"


def _keras_bn_epsilon(handle) -> float:
    config = handle.attrs.get("model_config")
    if config is None:
        return KERAS_BN_EPSILON
    for layer in json.loads(config if isinstance(config, str) else config.decode())["config"]["layers"]:
        if layer["class_name"] == "BatchNormalization":
            return float(layer["config"].get("epsilon", KERAS_BN_EPSILON))
    return KERAS_BN_EPSILON


# --- TF-slim checkpoint -------------------------------------------------------------------------------------------

SLIM_SCOPE = "MobilenetV1"


def slim_variable_names(layer: str) -> str:
    """TF-slim's variable scope of a canonical layer."""
    if layer == "conv0":
        return f"{SLIM_SCOPE}/Conv2d_0"
    if layer == "logits":
        return f"{SLIM_SCOPE}/Logits/Conv2d_1c_1x1"
    kind, index = layer[:2], layer[2:]
    return f"{SLIM_SCOPE}/Conv2d_{index}_{'depthwise' if kind == 'dw' else 'pointwise'}"


def _import_checkpoint(paths: list[Path], model: ModelConfig):
    try:
        from requestflow.board.tensorflow_import import import_tensorflow
        tf = import_tensorflow()
    except ImportError:
        raise UserError("reading a TF-slim checkpoint needs tensorflow") from None
    prefix = str(paths[0])[: -len(".index")] if str(paths[0]).endswith(".index") else str(paths[0])
    try:
        reader = tf.train.load_checkpoint(prefix)
    except Exception as exc:  # TF raises several unrelated types for an unreadable checkpoint
        raise UserError(f"{prefix}: not a readable TensorFlow checkpoint ({str(exc).splitlines()[0]})") from None
    available = set(reader.get_variable_to_shape_map())

    def get(name: str) -> np.ndarray:
        if name not in available:
            raise UserError(f"{prefix}: no variable {name}; is this a TF-slim MobileNet-v1 checkpoint?")
        return reader.get_tensor(name)

    tensors = {}
    for layer in model.layers():
        scope = slim_variable_names(layer.name)
        if layer.name == "logits":
            tensors["logits.weights"] = get(f"{scope}/weights").astype(np.float32)
            tensors["logits.bias"] = get(f"{scope}/biases").astype(np.float32)
            continue
        kernel = get(f"{scope}/depthwise_weights" if layer.kind == "depthwise" else f"{scope}/weights")
        bn = f"{scope}/BatchNorm"
        channels = kernel.shape[2] if layer.kind == "depthwise" else kernel.shape[3]
        gamma = get(f"{bn}/gamma") if f"{bn}/gamma" in available else np.ones(channels)  # scale=False variant
        tensors[f"{layer.name}.weights"], tensors[f"{layer.name}.bias"] = fold_batch_norm(
            kernel, gamma, get(f"{bn}/beta"), get(f"{bn}/moving_mean"), get(f"{bn}/moving_variance"),
            SLIM_BN_EPSILON, 2 if layer.kind == "depthwise" else 3)
    return tensors, tensors["logits.bias"].shape[0], "fp32"
