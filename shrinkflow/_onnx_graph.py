"""Rewrites of an exported int8 ONNX graph that give ONNX Runtime's CPU kernels the form they run
fastest, computing the same numbers (or, for the input convolution, closer to the float model's).

Both passes take and return serialized ONNX models; ``onnx`` is imported inside them because it is
only needed when a model is exported.
"""

from __future__ import annotations

import numpy as np

# An int8 convolution that reads the model's input with this many products per output or fewer
# (input channels x kernel size: 1 or 3 channels of a 3x3 kernel) runs faster in float32 in ONNX
# Runtime: its int8 kernels spend the call padding a short reduction. Measured on 2 cores of an Intel
# Xeon (AVX-512 VNNI), a 3x3 conv then a 32-channel one, images 8x8 and 28x28, batch 1 and 64: 1 input channel
# 1.12-1.29x faster in float, 3 channels 1.02-1.15x, 8 channels 0.68-0.81x, 16 channels 0.60-0.80x.
FLOAT_CONV_MAX_PRODUCTS = 32


def constant_values(graph) -> dict:
    """The values of the graph's constant tensors by name: initializers, Constant nodes, and the
    exporter's zero points written as Cast(ConstantOfShape(constant shape))."""
    from onnx import helper, numpy_helper

    values = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "ConstantOfShape" and node.input[0] in values:
            fill = numpy_helper.to_array(node.attribute[0].t) if node.attribute else np.zeros(1, np.float32)
            values[node.output[0]] = np.full(values[node.input[0]].astype(np.int64), fill.flat[0], fill.dtype)
        elif node.op_type == "Cast" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]].astype(helper.tensor_dtype_to_np_dtype(node.attribute[0].i))
    return values


def uniform_scales_as_scalars(onnx_model: bytes) -> bytes:
    """``onnx_model`` with every per-axis DequantizeLinear whose scales and zero points are each
    one value (per-tensor int8 weights, which checkpoints keep per channel) given that value as a
    scalar: the same numbers, and ONNX Runtime then fuses them into its per-tensor kernels."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(onnx_model)
    constants = constant_values(model.graph)
    changed = False
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or not any(a.name == "axis" for a in node.attribute):
            continue
        values = [constants.get(name) for name in node.input[1:]]
        if any(v is None or v.ndim != 1 or (v != v.flat[0]).any() for v in values):
            continue
        for index, value in enumerate(values, start=1):
            name = f"{node.name or node.output[0]}_scalar_{index}"
            model.graph.initializer.append(numpy_helper.from_array(value[:1].reshape(()), name))
            node.input[index] = name
        node.attribute.remove(next(a for a in node.attribute if a.name == "axis"))
        changed = True
    if not changed:
        return onnx_model
    _drop_dead_nodes(model.graph)
    return model.SerializeToString()


def float_input_convs(onnx_model: bytes) -> bytes:
    """``onnx_model`` with each int8 convolution that reads the model's quantized input, with at
    most ``FLOAT_CONV_MAX_PRODUCTS`` products per output, computed in float32 on the raw input from
    its own int8 weights and bias, dequantized exactly (codes x scale). Its output is quantized at
    the scale it had. Where a ReLU and a MaxPool follow, the pooling moves before quantizing."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(onnx_model)
    graph = model.graph
    constants = constant_values(graph)
    producers = {output: node for node in graph.node for output in node.output}
    model_input = graph.input[0].name
    changed = False
    for conv in [node for node in graph.node if node.op_type == "Conv"]:
        floats = _float_conv_parameters(conv, producers, constants, model_input)
        if floats is None:
            continue
        conv.input[0] = model_input
        for index, value in enumerate(floats, start=1):
            name = f"{conv.name or conv.output[0]}_float_{index}"
            graph.initializer.append(numpy_helper.from_array(value, name))
            conv.input[index] = name
        _pool_before_quantizing(graph, conv, constants)
        changed = True
    if not changed:
        return onnx_model
    _drop_dead_nodes(graph)
    _sort_topologically(graph)
    return model.SerializeToString()


def flatten_channels_last(onnx_model: bytes) -> bytes:
    """``onnx_model`` with each int8 Flatten of a 4-d activation into an int8 Gemm flattening
    channels-last (N, H, W, C), the Gemm's weight columns permuted to match: ONNX Runtime runs int8
    convolutions and pools channels-last and would transpose back to (N, C, H, W) before the
    Flatten; now that transpose and the one inserted here cancel. The same products, summed in
    another order, in integers: the same numbers."""
    import onnx
    from onnx import helper, numpy_helper, shape_inference

    model = onnx.load_from_string(onnx_model)
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    int8_flattens = [node for node in graph.node if node.op_type == "Flatten"
                     and getattr(producers.get(node.input[0]), "op_type", "") == "DequantizeLinear"]  # fmt: skip
    if not int8_flattens:  # a float model: nothing to infer shapes for
        return onnx_model
    inferred = shape_inference.infer_shapes(model).graph.value_info  # read only: the model keeps none
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred}
    constants = constant_values(graph)
    consumers = _consumers(graph)
    changed = False
    for flatten in int8_flattens:
        shape = shapes.get(flatten.input[0], [])
        gemm = _int8_reader(flatten.output[0], consumers, "Gemm")
        if len(shape) != 4 or 0 in shape[1:] or not gemm:
            continue
        weight = producers.get(gemm.input[1])
        if not _permutable_weight(weight, gemm, constants):
            continue
        codes = constants[weight.input[0]]  # (outputs, C*H*W): transB=1
        _, channels, height, width = shape
        permuted = codes.reshape(len(codes), channels, height, width).transpose(0, 2, 3, 1).reshape(codes.shape)
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(permuted), f"{weight.input[0]}_nhwc"))
        weight.input[0] = f"{weight.input[0]}_nhwc"
        channels_last = f"{flatten.input[0]}_nhwc"
        graph.node.append(helper.make_node("Transpose", [flatten.input[0]], [channels_last], perm=[0, 2, 3, 1]))
        flatten.input[0] = channels_last
        changed = True
    if not changed:
        return onnx_model
    _drop_dead_nodes(graph)
    _sort_topologically(graph)
    return model.SerializeToString()


def _int8_reader(tensor: str, consumers: dict, op_type: str):
    """The ``op_type`` node that reads ``tensor`` through Q → (Cast) → DQ, if that is its one path."""
    node = _only(consumers, tensor, "QuantizeLinear")
    while node is not None and node.op_type != op_type:
        readers = consumers.get(node.output[0], [])
        node = readers[0] if len(readers) == 1 and readers[0].op_type in ("Cast", "DequantizeLinear", op_type) else None
    return node


def _permutable_weight(weight, gemm, constants: dict) -> bool:
    """Whether ``gemm`` reads its weight (outputs, inputs) from int8 codes whose scales are one, or
    one per output: columns can then be permuted without touching the scales."""
    if weight is None or weight.op_type != "DequantizeLinear" or weight.input[0] not in constants:
        return False
    transposed = next((a.i for a in gemm.attribute if a.name == "transB"), 0) == 1
    scale = constants.get(weight.input[1])
    axis = next((a.i for a in weight.attribute if a.name == "axis"), 1)
    return transposed and constants[weight.input[0]].ndim == 2 and scale is not None and (scale.ndim == 0 or axis == 0)


def _float_conv_parameters(conv, producers: dict, constants: dict, model_input: str):
    """(weight, bias) of ``conv`` in float32 when it is an int8 convolution of the quantized model
    input short enough to run faster in float, else None."""
    source = producers.get(conv.input[0])
    if source is None or source.op_type != "DequantizeLinear":
        return None
    quantized = producers.get(source.input[0])
    while quantized is not None and quantized.op_type == "Cast":  # the exporter casts between Q and DQ
        quantized = producers.get(quantized.input[0])
    if quantized is None or quantized.op_type != "QuantizeLinear" or quantized.input[0] != model_input:
        return None
    has_bias = len(conv.input) > 2 and bool(conv.input[2])
    weight = _dequantized(producers.get(conv.input[1]), constants)
    bias = _dequantized(producers.get(conv.input[2]), constants) if has_bias else None
    if weight is None or (has_bias and bias is None):
        return None
    if int(np.prod(weight.shape[1:])) > FLOAT_CONV_MAX_PRODUCTS:
        return None
    return (weight,) if bias is None else (weight, bias)


def _dequantized(node, constants: dict) -> np.ndarray | None:
    """The float32 values of a DequantizeLinear of constant codes: (codes - zero point) x scale,
    per tensor or along its axis (ONNX's default axis is 1)."""
    if node is None or node.op_type != "DequantizeLinear" or any(name not in constants for name in node.input):
        return None
    codes = constants[node.input[0]].astype(np.float64)
    scale = constants[node.input[1]].astype(np.float64)
    zero_point = constants[node.input[2]].astype(np.float64) if len(node.input) > 2 else np.zeros(())
    if scale.ndim:  # per axis: shape the scales to broadcast along it
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % codes.ndim
        shape = [1] * codes.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape if zero_point.ndim else ())
    return ((codes - zero_point) * scale).astype(np.float32)


def _pool_before_quantizing(graph, conv, constants: dict) -> None:
    """Conv → ReLU → Q → DQ → MaxPool → Q, both Q at one scale, becomes Conv → MaxPool → ReLU → Q.

    The same numbers: MaxPool commutes with ReLU and with quantizing (both monotone), and
    quantizing twice at one scale is quantizing once. Left as it was, ONNX Runtime pools the uint8
    values in its slow generic kernel (528 of 750 µs at batch 64 on the digits cnn); with the Q
    right after the MaxPool, it moves the Q up before it, so the ReLU stays between them."""
    consumers = _consumers(graph)
    relu = _only(consumers, conv.output[0], "Relu")
    quantize = relu and _only(consumers, relu.output[0], "QuantizeLinear")
    dequantize, casts = None, []
    if quantize:
        dequantize = _only(consumers, quantize.output[0], "DequantizeLinear")
        cast = _only(consumers, quantize.output[0], "Cast")
        while cast and not dequantize:  # the exporter casts between Q and DQ
            casts.append(cast)
            dequantize = _only(consumers, cast.output[0], "DequantizeLinear")
            cast = _only(consumers, cast.output[0], "Cast")
    pool = dequantize and _only(consumers, dequantize.output[0], "MaxPool")
    requantize = pool and _only(consumers, pool.output[0], "QuantizeLinear")
    if not requantize or not _same_quantization(quantize, requantize, constants):
        return
    pool.input[0] = conv.output[0]
    relu.input[0] = pool.output[0]
    requantize.input[0] = relu.output[0]


def _same_quantization(first, second, constants: dict) -> bool:
    """Whether two QuantizeLinear nodes have the same constant scale and zero point."""
    if len(first.input) != len(second.input):
        return False
    pairs = [(constants.get(a), constants.get(b)) for a, b in zip(first.input[1:], second.input[1:], strict=True)]
    return all(a is not None and b is not None and a.dtype == b.dtype and np.array_equal(a, b) for a, b in pairs)


def _consumers(graph) -> dict[str, list]:
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def _only(consumers: dict, tensor: str, op_type: str):
    """The one node that reads ``tensor``, if there is exactly one and it is an ``op_type``."""
    readers = consumers.get(tensor, [])
    return readers[0] if len(readers) == 1 and readers[0].op_type == op_type else None


def _drop_dead_nodes(graph) -> None:
    """Nodes whose outputs nothing reads (ONNX operators have no side effects), then unused
    initializers: ONNX Runtime warns of each one left."""
    while True:
        used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
        dead = [node for node in graph.node if not any(name in used for name in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)


def _sort_topologically(graph) -> None:
    """ONNX requires each node after the nodes it reads from; rewiring can break that order."""
    available = {t.name for t in graph.initializer} | {t.name for t in graph.input} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:
            raise ValueError("the rewritten ONNX graph has a cycle")  # a bug here, not bad input
        for node in ready:
            ordered.append(type(node).FromString(node.SerializeToString()))
            available.update(node.output)
        pending = [node for node in pending if not all(name in available for name in node.output)]
    graph.ClearField("node")
    graph.node.extend(ordered)
