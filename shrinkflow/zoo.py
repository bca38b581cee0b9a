"""Model zoo: factories with width/depth knobs, and rebuilding a model from its description.

An architecture description is a JSON-able dict ``{"name", "params", "input_shape",
"num_classes"}``. ``params`` lists every layer width explicitly, so a model whose layers were
later narrowed (structured pruning) is rebuilt from its description alone.

Models (inputs are (B, *input_shape)):
- ``mlp``: LeNet-300-100 by default: flatten, hidden layers of 300 and 100 units with ReLU.
- ``cnn``: LeNet-5 style for images (C, H, W): [conv3x3 → ReLU → maxpool2] × 2 with 32 and 64
  channels (the article's CNN), then a 128-unit hidden layer and the classifier.
- ``cnn1d``: the MNIST-1D paper's conv net for signals (C, L): three stride-2 convs of 25
  channels (kernels 5, 3, 3), ReLU, then a linear classifier.
- ``lstm``: the article's RNN: a 2-layer LSTM of 128 units over the sequence (signals: L steps of
  C features; images: H rows of C·W features; tables: F steps of 1 feature), classifier on the
  last step.
- ``transformer``: a small pre-norm ViT-style encoder: the input cut into patches (2×2 pixels of
  an image, 4 steps of a signal; a convolution of that kernel and stride), each a token of 64
  features with a learned position, 2 blocks of 4-head self-attention (head size 16) and a
  128-unit GELU feed-forward layer, mean-pooled into the classifier. Each attention reads its
  head count from its projections' width, so structured pruning removes whole heads and
  feed-forward units and the description rebuilds the model.
- ``package.module:factory``: a user model, called as ``factory(input_shape=..., num_classes=...)``.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import nn

from shrinkflow._imports import TRUST_ENV, is_import_spec, load_callable, trust, trusted_here
from shrinkflow.config import ShrinkflowError

# the trust of user code (``package.module:factory`` models) is re-exported: _imports is private
__all__ = [
    "MODELS",
    "RESIZABLE",
    "TRUST_ENV",
    "build_model",
    "describe",
    "model_choices",
    "module_shapes",
    "trust",
    "trusted_here",
]

# Base layer widths at width=1; depth repeats the last one or truncates.
_BASE_WIDTHS = {
    "mlp": {"hidden_sizes": [300, 100]},
    "cnn": {"channels": [32, 64], "hidden_sizes": [128]},
    "cnn1d": {"channels": [25, 25, 25]},
    "lstm": {"hidden_size": 128, "num_layers": 2},
    "transformer": {"heads": 4, "ffn_size": 128, "num_layers": 2},
}
# The list that ``depth`` lengthens or shortens.
_DEPTH_KEY = {
    "mlp": "hidden_sizes", "cnn": "channels", "cnn1d": "channels", "lstm": "num_layers", "transformer": "num_layers"
}  # fmt: skip
MODELS = tuple(_BASE_WIDTHS)


def model_choices() -> str:
    return f"{', '.join(MODELS)}, or package.module:factory"


class MLP(nn.Module):
    def __init__(self, input_shape, num_classes, hidden_sizes):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = _numel(input_shape)
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class CNN(nn.Module):
    def __init__(self, input_shape, num_classes, channels, hidden_sizes):
        super().__init__()
        _require_rank(input_shape, 3, "cnn", "images (C, H, W)")
        blocks: list[nn.Module] = []
        in_channels = input_shape[0]
        for out_channels in channels:
            blocks += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.classifier = _classifier(_flat_size(self.features, input_shape, "cnn"), hidden_sizes, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


class CNN1d(nn.Module):
    """Greydanus & Kobak's MNIST-1D conv net (ConvBase): stride-2 convs, ReLU, linear head."""

    def __init__(self, input_shape, num_classes, channels):
        super().__init__()
        _require_rank(input_shape, 2, "cnn1d", "signals (C, L)")
        blocks: list[nn.Module] = []
        in_channels = input_shape[0]
        for i, out_channels in enumerate(channels):
            kernel = 5 if i == 0 else 3
            blocks += [nn.Conv1d(in_channels, out_channels, kernel, stride=2, padding=1), nn.ReLU()]
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.classifier = _classifier(_flat_size(self.features, input_shape, "cnn1d"), [], num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


class LSTMClassifier(nn.Module):
    def __init__(self, input_shape, num_classes, hidden_size, num_layers):
        super().__init__()
        self.input_shape = tuple(input_shape)
        steps, features = _sequence_shape(self.input_shape)
        self.lstm = nn.LSTM(features, hidden_size, num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x):
        batch = x.shape[0]
        if len(self.input_shape) == 1:
            seq = x.reshape(batch, -1, 1)  # (B, F, 1)
        elif len(self.input_shape) == 2:
            seq = x.transpose(1, 2)  # (B, C, L) -> (B, L, C)
        else:
            seq = x.permute(0, 2, 1, 3).reshape(batch, x.shape[2], -1)  # rows: (B, H, C*W)
        out, _ = self.lstm(seq)
        return self.fc(out[:, -1])


HEAD_SIZE = 16  # features per attention head; width scales the number of heads (and the FFN)


class SelfAttention(nn.Module):
    """Multi-head self-attention from four Linears. The head count is the projections' width
    over ``head_size``, so a model whose heads were pruned (narrower query/key/value, matching
    output input) runs and rebuilds without any other record; the attention matmuls are plain
    tensor ops, so export, int8 and the cost model see every piece."""

    def __init__(self, dim: int, heads: int, head_size: int = HEAD_SIZE):
        super().__init__()
        self.head_size = head_size
        self.query = nn.Linear(dim, heads * head_size)
        self.key = nn.Linear(dim, heads * head_size)
        self.value = nn.Linear(dim, heads * head_size)
        self.out = nn.Linear(heads * head_size, dim)

    def forward(self, x):
        # (B, L, H·d) <-> (B, H, L, d) without reading x's shape (-1: the heads this layer has now),
        # so torch.fx traces it and static int8 sees one graph
        q, k, v = (linear(x).unflatten(-1, (-1, self.head_size)).transpose(1, 2) for linear in self.projections())
        weights = torch.softmax(q @ k.transpose(-2, -1) * self.head_size**-0.5, dim=-1)
        return self.out((weights @ v).transpose(1, 2).flatten(2))

    def projections(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        return self.query, self.key, self.value


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_size: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_size), nn.GELU(), nn.Linear(ffn_size, dim))

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.ffn(self.norm2(x))


_PATCH = {2: 4, 3: 2}  # input rank -> patch side: 4 steps of a signal, 2x2 pixels of an image


class Transformer(nn.Module):
    """A pre-norm ViT-style encoder over patches of an image (C, H, W) or a signal (C, L)."""

    def __init__(self, input_shape, num_classes, heads, ffn_size, num_layers):
        super().__init__()
        self.input_shape = tuple(input_shape)
        if len(self.input_shape) not in _PATCH:
            raise ShrinkflowError(
                f"model 'transformer' needs images (C, H, W) or signals (C, L); this dataset's samples have shape "
                f"{self.input_shape} (use mlp or lstm for any shape)"
            )
        self.patch = _PATCH[len(self.input_shape)]
        if any(side % self.patch for side in self.input_shape[1:]):
            raise ShrinkflowError(
                f"model 'transformer' cuts samples into patches of {self.patch}; shape {self.input_shape} "
                "does not divide into them"
            )
        self.tokens = _numel(self.input_shape[1:]) // self.patch ** (len(self.input_shape) - 1)
        dim = heads * HEAD_SIZE
        conv = nn.Conv1d if len(self.input_shape) == 2 else nn.Conv2d  # a patch's features -> one token
        self.embed = conv(self.input_shape[0], dim, self.patch, stride=self.patch)
        self.position = nn.Embedding(self.tokens, dim)
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, ffn_size) for _ in range(num_layers)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        # The position table is looked up, not read as a bare weight: torch.fx (static int8) then
        # keeps it an Embedding, a layer the cost model and the quantizers know.
        positions = self.position(torch.arange(self.tokens, device=x.device))
        tokens = self.embed(x).flatten(2).transpose(1, 2) + positions  # (B, patches, dim)
        return self.head(self.norm(self.blocks(tokens)).mean(dim=1))


_CLASSES = {"mlp": MLP, "cnn": CNN, "cnn1d": CNN1d, "lstm": LSTMClassifier, "transformer": Transformer}


def describe(
    name: str, input_shape, num_classes: int, width: float = 1.0, depth: int = 0, names=("width", "depth")
) -> dict[str, Any]:
    """Architecture description for a zoo model scaled by ``width`` (× every layer width) and
    ``depth`` (number of hidden layers / conv blocks / LSTM layers; 0 keeps the default). A user
    factory gets ``width`` and ``depth`` if it takes them; if it does not, they must keep their
    defaults (``names``: what the user calls them, for the error)."""
    if not 0 < width < math.inf:  # also refuses NaN
        raise ShrinkflowError(f"width must be a finite number > 0, got {width}")
    if depth < 0:
        raise ShrinkflowError(f"depth must be >= 0 (0 = the model's default), got {depth}")
    if name in _BASE_WIDTHS:
        params = _scaled_params(name, width, depth)
    elif is_import_spec(name):
        trust(name)  # the user names it: build_model may call it in this process
        factory = load_callable(name, "model factory")  # fail early on a bad spec
        params = _factory_params(name, factory, {names[0]: (width, 1.0), names[1]: (depth, 0)})
    else:
        raise ShrinkflowError(f"unknown model {name!r}: choose {model_choices()}")
    return {"name": name, "params": params, "input_shape": list(input_shape), "num_classes": int(num_classes)}


# What Shrinkflow passes a user factory: always these, plus width and depth when it takes them.
FACTORY_ARGUMENTS = ("input_shape", "num_classes")


def _factory_params(name: str, factory, scaling: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Check ``factory`` against the contract (keyword arguments ``input_shape``, ``num_classes``,
    optionally ``width`` and ``depth``, nothing else required); return the scaling it gets."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}  # no signature to read (a builtin, a C extension): the call will tell
    keywords = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    takes = {n for n, p in parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY)}
    call = "factory(input_shape=<sample shape, e.g. (1, 8, 8)>, num_classes=<number of classes>[, width=, depth=])"
    missing = [a for a in FACTORY_ARGUMENTS if a not in takes and not keywords]
    required = [
        n for n, p in parameters.items() if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    unknown = [n for n in required if n not in (*FACTORY_ARGUMENTS, "width", "depth")]
    if missing or unknown:
        raise ShrinkflowError(
            f"model factory {name!r} takes ({', '.join(parameters)}), but Shrinkflow calls {call}: "
            + (
                f"it needs keyword argument(s) {', '.join(missing)}"
                if missing
                else f"{', '.join(unknown)} would have no value"
            )
        )
    params = {}
    for (user_name, (value, default)), argument in zip(scaling.items(), ("width", "depth"), strict=True):
        if value == default:
            continue
        if argument not in takes and not keywords:
            raise ShrinkflowError(
                f"model factory {name!r} takes no {argument} argument, so {user_name}={value} would change nothing: "
                f"leave {user_name} at {default}, or give the factory a {argument} parameter"
            )
        params[argument] = value
    return params


def check_model(model: nn.Module, example: torch.Tensor, num_classes: int, name: str) -> None:
    """Run ``model`` once on ``example`` (a batch of the dataset's samples) before any training:
    a model that expects another input layout, or returns other than one logit per class,
    fails here in one line."""
    shape = tuple(example.shape[1:])
    try:
        with torch.no_grad():
            output = model.eval()(example)
    except Exception as exc:  # the user's forward failed: show what it was given
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ShrinkflowError(
            f"model {name!r} fails on a batch of {len(example)} of this dataset's samples, each of shape {shape}: "
            f"{type(exc).__name__}: {first_line}"
        ) from None
    expected = (len(example), num_classes)
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != expected:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ShrinkflowError(
            f"model {name!r} returns {got} for a batch of {len(example)} samples of shape {shape}; expected logits of "
            f"shape {expected} (one per class)"
        )


def build_model(arch: dict[str, Any]) -> nn.Module:
    """Rebuild a model (fresh weights) from its architecture description. A user factory runs
    only if trusted (``shrinkflow._imports``): named by the user in this process (``describe``)
    or listed in ``SHRINKFLOW_TRUST_CODE`` — a description read from a file cannot choose code.

    ``arch["resized"]`` (written by structured pruning) maps module names to the widths they
    were cut to; those modules are rebuilt at that width, so zoo and user models alike reload.
    """
    name, shape, classes = arch["name"], tuple(arch["input_shape"]), arch["num_classes"]
    if name in _CLASSES:
        model = _CLASSES[name](shape, classes, **arch["params"])
    elif is_import_spec(name):
        factory = load_callable(name, "model factory", from_artifact=True)
        try:
            model = factory(input_shape=shape, num_classes=classes, **arch["params"])
        except Exception as exc:  # the user's code failed: say whose, in one line
            raise ShrinkflowError(f"model factory {name!r} raised {type(exc).__name__}: {exc}") from None
        if not isinstance(model, nn.Module):
            raise ShrinkflowError(f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    else:
        raise ShrinkflowError(f"unknown model {name!r}: choose {model_choices()}")
    for module_name, widths in arch.get("resized", {}).items():
        _resize_module(model, module_name, widths)
    return model


# The constructor arguments that carry a layer's width, per layer type.
_WIDTH_ARGS = {
    nn.Linear: ("in_features", "out_features"),
    nn.Conv1d: ("in_channels", "out_channels", "groups"),
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.BatchNorm1d: ("num_features",),
    nn.BatchNorm2d: ("num_features",),
    nn.LSTM: ("input_size", "hidden_size"),
}


RESIZABLE = tuple(_WIDTH_ARGS)  # the layer types a description can rebuild at another width


def module_shapes(model: nn.Module) -> dict[str, dict[str, int]]:
    """Width arguments of every resizable layer, by module name (see ``build_model``)."""
    return {
        name: {arg: getattr(module, arg) for arg in _WIDTH_ARGS[type(module)]}
        for name, module in model.named_modules()
        if type(module) in _WIDTH_ARGS
    }


def _resize_module(model: nn.Module, name: str, widths: dict[str, int]) -> None:
    try:
        old = model.get_submodule(name)
    except AttributeError:
        raise ShrinkflowError(f"architecture resizes layer {name!r}, which the model does not have") from None
    if type(old) not in _WIDTH_ARGS:
        raise ShrinkflowError(f"cannot resize layer {name!r} of type {type(old).__name__}")
    if all(getattr(old, arg) == value for arg, value in widths.items()):
        return
    new = _rebuilt(old, widths)
    parent_name, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attribute, new)


def _rebuilt(old: nn.Module, widths: dict[str, int]) -> nn.Module:
    """A fresh layer of ``old``'s type and settings with the widths replaced."""
    if isinstance(old, nn.Linear):
        return nn.Linear(widths["in_features"], widths["out_features"], bias=old.bias is not None)
    if isinstance(old, (nn.Conv1d, nn.Conv2d)):
        return type(old)(
            widths["in_channels"], widths["out_channels"], old.kernel_size, stride=old.stride,
            padding=old.padding, dilation=old.dilation, groups=widths["groups"], bias=old.bias is not None,
            padding_mode=old.padding_mode,
        )  # fmt: skip
    if isinstance(old, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return type(old)(widths["num_features"], eps=old.eps, momentum=old.momentum, affine=old.affine,
                         track_running_stats=old.track_running_stats)  # fmt: skip
    return nn.LSTM(widths["input_size"], widths["hidden_size"], old.num_layers, bias=old.bias,
                   batch_first=old.batch_first, dropout=old.dropout, bidirectional=old.bidirectional)  # fmt: skip


def _scaled_params(name: str, width: float, depth: int) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, value in _BASE_WIDTHS[name].items():
        if key == "num_layers":
            params[key] = depth or value
        elif isinstance(value, list):
            sizes = _resize(value, depth) if depth and key == _DEPTH_KEY[name] else value
            params[key] = [_scale(n, width) for n in sizes]
        else:
            params[key] = _scale(value, width)
    return params


def _scale(n: int, width: float) -> int:
    return max(1, round(n * width))


def _resize(sizes: list[int], depth: int) -> list[int]:
    return sizes[:depth] + [sizes[-1]] * (depth - len(sizes))


def _classifier(in_features: int, hidden_sizes, num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for size in hidden_sizes:
        layers += [nn.Linear(in_features, size), nn.ReLU()]
        in_features = size
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


def _flat_size(features: nn.Module, input_shape, name: str) -> int:
    with torch.no_grad():
        try:
            out = features(torch.zeros(1, *input_shape))
        except RuntimeError as exc:
            raise ShrinkflowError(f"model {name!r} is too deep for input shape {tuple(input_shape)}: {exc}") from exc
    return out.numel()


def _require_rank(input_shape, rank: int, name: str, expected: str) -> None:
    if len(input_shape) != rank:
        raise ShrinkflowError(
            f"model {name!r} needs {expected}; this dataset's samples have shape {tuple(input_shape)} "
            "(use mlp or lstm for any shape)"
        )


def _sequence_shape(input_shape) -> tuple[int, int]:
    if len(input_shape) == 1:
        return input_shape[0], 1
    if len(input_shape) == 2:
        return input_shape[1], input_shape[0]
    if len(input_shape) == 3:
        return input_shape[1], input_shape[0] * input_shape[2]
    raise ShrinkflowError(f"model 'lstm' cannot read samples of shape {tuple(input_shape)}")


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
