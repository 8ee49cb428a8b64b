"""The MobileNets-v1 catalogue: the 16 configurations, their layers, MACs and parameters.

Vocabulary shared by every part of requestflow:

- model id ``mobilenet-v1-<width>-<resolution>``, width in 0.25 0.5 0.75 1.0, resolution in 128 160 192 224;
- precision ``fp32``, ``uint8`` or ``int8``: the stored tensor type of the weights that are run;
- backend ``tf``, ``tflite`` (later ``armcl``); mode ``performance`` or ``accuracy``.

The layer list is the network of TF-slim's ``mobilenet_v1.py``: a 3x3 stride-2 convolution, 13 depthwise separable
blocks (3x3 depthwise + 1x1 pointwise, each followed by batch norm and ReLU6), global average pooling and a 1x1
convolution to the logits. MACs and parameters are computed from it and checked against TF-slim's published table
(``PUBLISHED``) by the tests.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import cached_property

from requestflow.errors import UserError

WIDTHS = (0.25, 0.5, 0.75, 1.0)
RESOLUTIONS = (128, 160, 192, 224)
PRECISIONS = ("fp32", "uint8", "int8")
BACKENDS = ("tf", "tflite", "armcl")
# backends that compute in float: they run quantized weights dequantized, and only fp32
FLOAT_BACKENDS = ("tf", "armcl")
MODES = ("performance", "accuracy")
# the armcl backend's variant: each key's choices, the first the default (its label lists them in this order)
ARMCL_VARIANT = {"target": ("CL", "NEON"), "layout": ("NHWC", "NCHW"),
                 "conv_method": ("DEFAULT", "GEMM", "DIRECT", "WINOGRAD"),
                 "tuner": ("NONE", "RAPID", "NORMAL", "EXHAUSTIVE")}


# the tf backend's compilers (its variant ``compiler``), the first the default: a tf.function graph, or XLA
TF_COMPILERS = ("graph", "xla")


def variant_label(variant: dict | None) -> str:
    """An armcl variant as ``CL/NHWC/DEFAULT/NONE`` (defaults filled in; a conv methods file adds its hash); tf's XLA
    as ``XLA``, planned (``{"compiler": "xla"}``) or recorded (``jit_compile`` true); empty for the default graph
    (labels of points stored before compilers existed stay as they were) and for a backend without variants."""
    if variant and (variant.get("compiler") == "xla" or variant.get("jit_compile") is True):
        return "XLA"
    if not variant or not any(key in variant for key in ARMCL_VARIANT):
        return ""
    text = "/".join(str(variant.get(key, choices[0])) for key, choices in ARMCL_VARIANT.items())
    return text + (f"/methods:{variant['conv_methods_sha256'][:8]}" if variant.get("conv_methods_sha256") else "")


def point_label(point: dict) -> str:
    """``<model> <backend> <mode>[ <variant label>][ <runtime spec>]``: how sweeps name a point (a planned point, a
    stored point's columns, a failure's point), in task names, logs and tallies."""
    label = " ".join(part for part in (variant_label(point.get("variant")), point.get("runtime")) if part)
    return f"{point.get('model')} {point.get('backend')} {point.get('mode')}" + (f" {label}" if label else "")

# (depthwise stride, pointwise output channels at width 1.0) of the 13 separable blocks.
_BLOCKS = (
    (1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
    (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024),
)
_STEM_CHANNELS = 32
_MIN_DEPTH = 8

# TF-slim's table (research/slim/nets/mobilenet_v1.md): million MACs, million parameters, top-1 and top-5 (%) of
# the 2018_02_22 float checkpoints on the 50,000 ImageNet validation images.
PUBLISHED = {
    (1.0, 224): (569, 4.24, 70.9, 89.9), (1.0, 192): (418, 4.24, 70.0, 89.2),
    (1.0, 160): (291, 4.24, 68.0, 87.7), (1.0, 128): (186, 4.24, 65.2, 85.8),
    (0.75, 224): (317, 2.59, 68.4, 88.2), (0.75, 192): (233, 2.59, 67.2, 87.3),
    (0.75, 160): (162, 2.59, 65.3, 86.0), (0.75, 128): (104, 2.59, 62.1, 83.9),
    (0.5, 224): (150, 1.34, 63.3, 84.9), (0.5, 192): (110, 1.34, 61.7, 83.6),
    (0.5, 160): (77, 1.34, 59.1, 81.9), (0.5, 128): (49, 1.34, 56.3, 79.4),
    (0.25, 224): (41, 0.47, 49.8, 74.2), (0.25, 192): (34, 0.47, 47.7, 72.3),
    (0.25, 160): (21, 0.47, 45.5, 70.3), (0.25, 128): (14, 0.47, 41.5, 66.3),
}


def width_text(width: float) -> str:
    """0.25 -> '0.25', 0.5 -> '0.5', 1.0 -> '1.0' (the spelling of model ids and official file names)."""
    return f"{width:.2f}".rstrip("0") if width != 1.0 else "1.0"


@dataclass(frozen=True)
class Layer:
    """One weighted layer in canonical form.

    ``kind`` is ``conv`` (weights HWIO), ``depthwise`` (weights HWC1) or ``pointwise`` (weights 11IO); every layer
    has a bias (batch norm folded in). ``stride`` applies with TensorFlow's SAME padding; every layer but the logits
    is followed by ReLU6.
    """

    name: str
    kind: str
    weights_shape: tuple[int, ...]
    stride: int
    in_size: int  # spatial size of the input feature map
    relu6: bool = True

    @property
    def bias_shape(self) -> tuple[int, ...]:
        return (self.weights_shape[2] if self.kind == "depthwise" else self.weights_shape[3],)

    @property
    def out_size(self) -> int:
        return -(-self.in_size // self.stride)

    @property
    def macs(self) -> int:
        kh, kw, cin, cout = self.weights_shape
        per_pixel = kh * kw * cin * (1 if self.kind == "depthwise" else cout)
        return per_pixel * self.out_size * self.out_size

    @property
    def params(self) -> int:
        kh, kw, cin, cout = self.weights_shape
        return kh * kw * cin * cout + self.bias_shape[0]


@dataclass(frozen=True)
class ModelConfig:
    width: float
    resolution: int

    @property
    def id(self) -> str:
        return f"mobilenet-v1-{width_text(self.width)}-{self.resolution}"

    @property
    def slim_name(self) -> str:
        """TF-slim's spelling, as in the official file names: ``mobilenet_v1_0.25_128``."""
        return f"mobilenet_v1_{width_text(self.width)}_{self.resolution}"

    def depth(self, channels: int) -> int:
        return max(int(channels * self.width), _MIN_DEPTH)

    def layers(self, classes: int = 1001) -> list[Layer]:
        size = self.resolution
        cin = self.depth(_STEM_CHANNELS)
        out = [Layer("conv0", "conv", (3, 3, 3, cin), 2, size)]
        size = out[-1].out_size
        for i, (stride, channels) in enumerate(_BLOCKS, start=1):
            cout = self.depth(channels)
            out.append(Layer(f"dw{i}", "depthwise", (3, 3, cin, 1), stride, size))
            size = out[-1].out_size
            out.append(Layer(f"pw{i}", "pointwise", (1, 1, cin, cout), 1, size))
            cin = cout
        out.append(Layer("logits", "pointwise", (1, 1, cin, classes), 1, 1, relu6=False))
        return out

    @cached_property
    def macs(self) -> int:
        """Multiply-accumulates of one inference (1001 classes, as TF-slim counts them)."""
        return sum(layer.macs for layer in self.layers())

    @cached_property
    def params(self) -> int:
        """Parameters after batch-norm folding (weights + biases, 1001 classes)."""
        return sum(layer.params for layer in self.layers())

    def as_dict(self) -> dict:
        published = PUBLISHED[(self.width, self.resolution)]
        return {
            "id": self.id,
            "width": self.width,
            "resolution": self.resolution,
            "macs": self.macs,
            "params": self.params,
            "published": {"million_macs": published[0], "million_params": published[1],
                          "top1": published[2] / 100, "top5": published[3] / 100,
                          "source": "TF-slim mobilenet_v1.md, 2018_02_22 float, 50,000 images"},
        }


CONFIGS: tuple[ModelConfig, ...] = tuple(ModelConfig(w, r) for w in WIDTHS for r in RESOLUTIONS)
_BY_ID = {c.id: c for c in CONFIGS}


def get_model(model_id: str) -> ModelConfig:
    """The config of a model id; an unknown id is a UserError that suggests the nearest ones."""
    try:
        return _BY_ID[model_id]
    except KeyError:
        near = _nearest(model_id)
        hint = f"; did you mean {' or '.join(near)}?" if near else f"; known: {', '.join(_BY_ID)}"
        raise UserError(f"unknown model id {model_id!r}{hint}") from None


def _nearest(model_id: str) -> list[str]:
    """The closest ids: by width and resolution when the text ends in two numbers (``..._0.25_129``), else by
    spelling."""
    match = re.search(r"(\d+(?:\.\d+)?)[-_ ](\d+)$", model_id)
    if match:
        width, resolution = float(match.group(1)), int(match.group(2))
        best = min(CONFIGS, key=lambda c: (abs(c.width - width), abs(c.resolution - resolution)))
        if abs(best.width - width) <= 0.25 and abs(best.resolution - resolution) <= 32:
            return [best.id]
    return difflib.get_close_matches(model_id, list(_BY_ID), n=3, cutoff=0.5)


def model_for(width: float, resolution: int) -> ModelConfig:
    return get_model(ModelConfig(width, resolution).id)
