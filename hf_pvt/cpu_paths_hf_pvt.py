"""CPU fast paths: the encoder's arithmetic, computed faster on CPU. Off with `HF_PVT_FAST_PATHS=0`.

`modeling_hf_pvt.py` is written as plain PyTorch modules; where `enabled(tensor)` holds (the switch is on, the tensor
is on the CPU, and no `torch.compile` / `torch.export` trace is running) these functions stand in for some of its
steps:

- `conv_to_tokens`: a convolution whose kernel equals its stride (v1's patch embeddings, the spatial reductions) as
  one matmul over the gathered patches, in inference;
- `mlp_forward`: the MLP in cache-sized chunks that reuse one buffer (inference), or with a hand-written backward
  that keeps one activation instead of four (training, `CpuMlpFunction`);
- `add_residual`: sums written into a fresh tensor instead of a new one.

Each computes the same products as the plain modules, in another order or in place, so results agree to float
rounding (see `tests/test_performance_paths.py`); each declines, and the plain modules run, wherever that could not
be so (dropout, another activation, autocast in inference, torch.func transforms). The environment variable is
read at every call, so `HF_PVT_FAST_PATHS=0` set at any time turns them all off: use it to rule them out when
debugging, or to measure what they bring.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

SWITCH = "HF_PVT_FAST_PATHS"
# Sizes of the MLP's row chunks: measured best of 1-8 MB on a 2-core EPYC, for batch 1 and 8 in inference.
TRAINING_CHUNK_BYTES = 8 * 2**20
INFERENCE_CHUNK_BYTES = 2 * 2**20


def enabled(tensor: torch.Tensor) -> bool:
    """The one condition of every fast path: switched on, a CPU tensor, and no compile or export trace (whose
    backends fuse their own kernels and want the plain ops)."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return False
    return tensor.device.type == "cpu" and os.environ.get(SWITCH, "1") != "0"


def tokens_to_map(hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """View `(B, H*W, C)` tokens as a `(B, C, H, W)` map without copying: the result is channels-last strided,
    which convolutions accept as is and whose `flatten(2).transpose(1, 2)` is again a free, contiguous view."""
    return hidden_states.unflatten(1, (height, width)).permute(0, 3, 1, 2)


def add_residual(branch: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """branch + residual, written into `branch` (a fresh tensor that no backward saved) where that is free. Not
    when autograd records a view: a linear's 3-d output is a view of its 2-d result, and an in-place write into a
    view makes backward rebuild the whole base (zeros, as_strided, copies), costlier than a new tensor."""
    if not enabled(branch) or (branch.requires_grad and torch.is_grad_enabled() and branch._is_view()):
        return branch + residual
    return branch.add_(residual)


# ------------------------------------------------------------------------------------------------------------------
# Convolutions whose kernel equals their stride


def conv_to_tokens(conv: nn.Conv2d, feature_map: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """`conv(feature_map)` as `(B, H'*W', C_out)` tokens, with its output height and width.

    A convolution whose kernel equals its stride (the spatial reductions, v1's patch embeddings) cuts the map
    into disjoint patches, so for CPU inference it runs as one matmul over the gathered patches: faster than the
    convolution kernel for these shapes, and at batch 1 the gather costs less than the channels-last copy of the
    weight that the convolution makes on every call. Same products, summed in another order. Under autograd the
    gather's backward (a scatter) eats the gain, so training keeps `conv`.
    """
    kernel = conv.kernel_size[0]
    if (
        not enabled(feature_map)
        or (torch.is_grad_enabled() and (feature_map.requires_grad or conv.weight.requires_grad))
        or conv.kernel_size != (kernel, kernel)
        or conv.stride != conv.kernel_size
        or conv.padding != (0, 0)
        or conv.dilation != (1, 1)
        or conv.groups != 1
    ):
        output = conv(feature_map)
        return output.flatten(2).transpose(1, 2), output.shape[-2], output.shape[-1]
    batch_size, channels, height, width = feature_map.shape
    if height % kernel or width % kernel:  # the convolution drops the rows and columns left over
        feature_map = feature_map[:, :, : height - height % kernel, : width - width % kernel]
    height, width = height // kernel, width // kernel
    if feature_map.is_contiguous():  # (C, kh, kw) patches: the weight's own layout
        patches = feature_map.reshape(batch_size, channels, height, kernel, width, kernel).permute(0, 2, 4, 1, 3, 5)
        weight = conv.weight.reshape(conv.out_channels, -1)
    else:  # channels-last token maps: (kh, kw, C) patches, whose rows are contiguous runs of the tokens
        patches = feature_map.permute(0, 2, 3, 1).reshape(batch_size, height, kernel, width, kernel, channels)
        patches = patches.permute(0, 1, 3, 2, 4, 5)
        weight = _token_order_weight(conv)
    tokens = F.linear(patches.reshape(batch_size * height * width, weight.shape[1]), weight, conv.bias)
    return tokens.view(batch_size, height * width, conv.out_channels), height, width


def _token_order_weight(conv: nn.Conv2d) -> torch.Tensor:
    """`conv.weight` as `(out, kh * kw * in)`, the order of patches gathered from channels-last token maps. The
    permute is a copy of the weight, which at batch 1 costs more than the patch gather (6 of 130 ms of a pvt-small
    forward), so the copy is kept on the module until the weight changes: another tensor, or an in-place write,
    which bumps its version. The strong references keep a replaced weight's memory from being reused meanwhile."""
    weight = conv.weight
    cached = conv.__dict__.get("_hf_pvt_token_order_weight")
    if cached is None or cached[0] is not weight or cached[1] != (weight.data_ptr(), weight._version):
        with torch.inference_mode(False):  # a normal tensor, usable outside inference mode too
            flat = weight.detach().permute(0, 2, 3, 1).reshape(conv.out_channels, -1)
        cached = (weight, (weight.data_ptr(), weight._version), weight.untyped_storage(), flat)
        conv.__dict__["_hf_pvt_token_order_weight"] = cached
    return cached[3]


# ------------------------------------------------------------------------------------------------------------------
# The MLP: fc1 -> [ReLU] -> [3x3 depthwise conv] -> GELU -> fc2


def mlp_forward(mlp: nn.Module, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor | None:
    """`HfPvtMlp`'s output through a fast path, or None where none applies (the module's own ops then run)."""
    if not enabled(hidden_states) or not _is_exact_gelu(mlp):
        return None
    if torch.is_grad_enabled() and (hidden_states.requires_grad or mlp.fc1.weight.requires_grad):
        if not (hidden_states.requires_grad and fused_backward_applies(mlp, hidden_states)):
            return None
        dwconv = mlp.dwconv
        return CpuMlpFunction.apply(
            hidden_states, mlp.fc1.weight, mlp.fc1.bias, dwconv.weight if dwconv is not None else None,
            dwconv.bias if dwconv is not None else None, mlp.fc2.weight, mlp.fc2.bias, mlp, height, width,
        )  # fmt: skip
    if torch.is_autocast_enabled("cpu") or (mlp.training and mlp.dropout.p > 0) or hidden_states.numel() == 0:
        return None
    return mlp_inference(mlp, hidden_states, height, width)


def _is_exact_gelu(mlp: nn.Module) -> bool:
    # Both paths hard-code the exact (erf) GELU; any other activation takes the module's own ops.
    return mlp.hidden_act == "gelu"


def fused_backward_applies(mlp: nn.Module, hidden_states: torch.Tensor) -> bool:
    """Whether `CpuMlpFunction` computes exactly what the MLP's own ops would: no active dropout, and not under
    torch.func transforms (whose wrapped tensors a hand-written backward cannot see through)."""
    return (mlp.dropout.p == 0 or not mlp.training) and not torch._C._functorch.is_functorch_wrapped_tensor(
        hidden_states
    )


def mlp_inference(mlp: nn.Module, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The MLP without autograd, in cache-sized chunks of rows that all reuse one fc1 buffer and write fc2's rows
    straight into the output. The inner activations (4-8x the width) are the model's largest tensors: allocated
    per call, each would be fresh memory whose page faults cost as much as the matmul filling it (measured: a third
    of a batch-8 forward's MLP time), and in one piece they spill out of the caches. Exact: the MLP is per token,
    except for the 3x3 depthwise conv, which gets whole images, or bands of image rows (`_mlp_inference_bands`)
    where one image is larger than a chunk."""
    batch_size, num_tokens, channels = hidden_states.shape
    inputs = hidden_states.reshape(-1, channels)
    output = torch.empty_like(inputs)
    band_rows = image_band_rows(mlp, num_tokens, width, hidden_states.dtype)
    if band_rows is not None:
        _mlp_inference_bands(mlp, inputs, output, height, width, band_rows)
        return output.view_as(hidden_states)
    chunks = chunk_rows(
        batch_size, num_tokens, mlp.fc1.out_features, hidden_states.dtype, INFERENCE_CHUNK_BYTES,
        mlp.dwconv is not None,
    )  # fmt: skip
    buffer = inputs.new_empty(max(rows.stop - rows.start for rows in chunks), mlp.fc1.out_features)
    fc1_weight_t, fc2_weight_t = mlp.fc1.weight.t(), mlp.fc2.weight.t()
    for rows in chunks:
        inner = torch.addmm(mlp.fc1.bias, inputs[rows], fc1_weight_t, out=buffer[: rows.stop - rows.start])
        if mlp.relu is not None:
            inner.relu_()
        if mlp.dwconv is not None:
            images = tokens_to_map(inner.view(-1, num_tokens, inner.shape[1]), height, width)
            inner = mlp.dwconv(images).permute(0, 2, 3, 1).reshape(inner.shape)
        torch.ops.aten.gelu_(inner)
        torch.addmm(mlp.fc2.bias, inner, fc2_weight_t, out=output[rows])
    return output.view_as(hidden_states)


def image_band_rows(mlp: nn.Module, num_tokens: int, width: int, dtype: torch.dtype) -> int | None:
    """Image rows per band for v2 images whose inner activations exceed `INFERENCE_CHUNK_BYTES` (at least two, so
    that the rows a band hands on never overlap the rows they move to), or None where whole images fit a chunk."""
    step = max(1, INFERENCE_CHUNK_BYTES // (mlp.fc1.out_features * dtype.itemsize))
    if mlp.dwconv is None or step >= num_tokens:
        return None
    return max(2, step // width)


def image_bands(height: int, band_rows: int) -> list[tuple[int, int]]:
    """`(top, bottom)` image rows of each band, top to bottom."""
    return [(top, min(top + band_rows, height)) for top in range(0, height, band_rows)]


def _mlp_inference_bands(
    mlp: nn.Module, inputs: torch.Tensor, output: torch.Tensor, height: int, width: int, band_rows: int
) -> None:
    """v2's MLP over bands of image rows, each image top to bottom, fc1 computed once per row.

    The depthwise conv of a band reads one row above and one below it. The buffer holds those rows with the band
    (zeros beyond the image: the conv's own padding), so the conv runs unpadded in height and gives exactly the
    band's rows; the two rows a band shares with the next (its last row and the one below) are moved to the top of
    the buffer instead of being recomputed by fc1. Computing halo rows twice cost 2 of every 5 rows' fc1 and conv
    on the stage-1 maps of an 800x1216 image (8% of a pvt-v2-b2 backbone forward).
    """
    inner_size, num_tokens = mlp.fc1.out_features, height * width
    buffer = inputs.new_empty((band_rows + 2) * width, inner_size)
    fc1_weight_t, fc2_weight_t = mlp.fc1.weight.t(), mlp.fc2.weight.t()
    weight, bias = mlp.dwconv.weight, mlp.dwconv.bias
    for image_start in range(0, inputs.shape[0], num_tokens):
        buffer[:width].zero_()  # the row above the image
        held = 1  # buffer rows filled so far; buffer row r holds image row top - 1 + r
        for top, bottom in image_bands(height, band_rows):
            last = min(bottom + 1, height)  # image rows up to here are read by this band
            new_rows = slice(image_start + (top - 1 + held) * width, image_start + last * width)
            count = last - (top - 1)
            inner = torch.addmm(mlp.fc1.bias, inputs[new_rows], fc1_weight_t, out=buffer[held * width : count * width])
            if mlp.relu is not None:
                inner.relu_()
            if bottom == height:  # the row below the image
                buffer[count * width : (count + 1) * width].zero_()
                count += 1
            band = tokens_to_map(buffer[: count * width].view(1, count * width, inner_size), count, width)
            convolved = F.conv2d(band, weight, bias, padding=(0, 1), groups=inner_size)
            activated = torch.ops.aten.gelu_(convolved.permute(0, 2, 3, 1).reshape(-1, inner_size))
            rows = slice(image_start + top * width, image_start + bottom * width)
            torch.addmm(mlp.fc2.bias, activated, fc2_weight_t, out=output[rows])
            if bottom < height:  # hand the band's last row and the row below it to the next band
                buffer[: 2 * width].copy_(buffer[(count - 2) * width : count * width])
                held = 2


def chunk_rows(
    batch_size: int, num_tokens: int, inner_size: int, dtype: torch.dtype, chunk_bytes: int, whole_images: bool
) -> list[slice]:
    """Rows of the flattened `(batch * tokens, inner)` activations, about `chunk_bytes` of them each: any rows, or
    with `whole_images` (v2, whose depthwise conv reads the neighbouring rows) whole images."""
    step = max(1, chunk_bytes // (inner_size * dtype.itemsize))
    if whole_images:
        step = num_tokens * max(1, step // num_tokens)
    total = batch_size * num_tokens
    return [slice(start, min(start + step, total)) for start in range(0, total, step)]


def pre_activation(
    mlp: nn.Module, inner: torch.Tensor, height: int, width: int, weight: torch.Tensor | None,
    bias: torch.Tensor | None, dtype: torch.dtype,
) -> torch.Tensor:  # fmt: skip
    """The GELU input for rows of fc1's (ReLU'd) output: the rows themselves (v1) or v2's depthwise conv of
    them, computed in `dtype`, as `(rows, inner)`."""
    if mlp.dwconv is None:
        return inner
    feature_map = tokens_to_map(inner.view(-1, height * width, inner.shape[1]), height, width)
    convolved = F.conv2d(feature_map, weight.to(dtype), bias.to(dtype), padding=1, groups=inner.shape[1])
    return convolved.permute(0, 2, 3, 1).reshape(inner.shape)


def _autocast_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype CPU autocast would compute a linear or convolution of `tensor` in (its own dtype without autocast)."""
    if torch.is_autocast_enabled("cpu") and tensor.is_floating_point():
        return torch.get_autocast_dtype("cpu")
    return tensor.dtype


def _add_product(total: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> None:
    """total += left @ right, fused where the dtypes agree (a bf16 product adds into a float32 total)."""
    if total.dtype == left.dtype:
        total.addmm_(left, right)
    else:
        total.add_(left @ right)


class CpuMlpFunction(torch.autograd.Function):
    """The MLP of a training step on CPU, fc1 -> [ReLU] -> [depthwise conv] -> GELU -> fc2, with its own backward.

    Plain autograd keeps three or four inner activations (4-8x the width) per block alive until backward and
    allocates three more there: on CPU each is a fresh buffer of tens of MB, and faulting its pages in costs about
    as much as a matmul over it. Here only fc1's output is kept; the conv and GELU outputs are recomputed in backward
    (elementwise-cheap), and everything after fc1 runs on cache-sized chunks of rows (v1) or of whole images (v2,
    whose 3x3 conv needs the neighbouring rows), so the temporaries are small reused blocks and the GELU backward
    runs in place on data still in cache. The arithmetic is autograd's; only the order in which the weight
    gradients sum over chunks differs.
    """

    @staticmethod
    def forward(
        ctx, hidden_states, fc1_weight, fc1_bias, dw_weight, dw_bias, fc2_weight, fc2_bias, mlp, height, width
    ):  # fmt: skip
        # Autocast does not reach into a Function's body: cast as it would, linears and convolutions with inputs.
        dtype = _autocast_dtype(hidden_states)
        ctx.mlp, ctx.dtype, ctx.size = mlp, dtype, (height, width)
        batch_size, num_tokens, channels = hidden_states.shape
        whole_images = mlp.dwconv is not None
        with torch.autocast("cpu", enabled=False):
            inputs = hidden_states.to(dtype).reshape(-1, channels)
            inner = F.linear(inputs, fc1_weight.to(dtype), fc1_bias.to(dtype))
            if mlp.relu is not None:
                inner.relu_()
            fc2_weight_t, fc2_bias = fc2_weight.to(dtype).t(), fc2_bias.to(dtype)
            output = inputs.new_empty(batch_size, num_tokens, channels)
            flat_output = output.view(-1, channels)
            for rows in chunk_rows(batch_size, num_tokens, inner.shape[1], dtype, TRAINING_CHUNK_BYTES, whole_images):
                pre = pre_activation(mlp, inner[rows], height, width, dw_weight, dw_bias, dtype)
                # v1's GELU input is the kept fc1 output itself; v2's is the conv's fresh output, free to overwrite.
                activated = F.gelu(pre) if mlp.dwconv is None else torch.ops.aten.gelu_(pre)
                torch.addmm(fc2_bias, activated, fc2_weight_t, out=flat_output[rows])
        ctx.save_for_backward(hidden_states, inner, fc1_weight, dw_weight, dw_bias, fc2_weight)
        return output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        hidden_states, inner, fc1_weight, dw_weight, dw_bias, fc2_weight = ctx.saved_tensors
        mlp, dtype, (height, width) = ctx.mlp, ctx.dtype, ctx.size
        needs = ctx.needs_input_grad
        batch_size, num_tokens, channels = hidden_states.shape
        inner_size = inner.shape[1]
        whole_images = mlp.dwconv is not None
        with torch.autocast("cpu", enabled=False):
            inputs = hidden_states.to(dtype).reshape(-1, channels)
            grads = grad_output.to(dtype).reshape(-1, channels)
            fc1_weight_c, fc2_weight_c = fc1_weight.to(dtype), fc2_weight.to(dtype)
            grad_inputs = torch.empty_like(inputs) if needs[0] else None
            # Weight gradients accumulate in the parameters' dtype (float32 under bf16 autocast).
            grad_fc1_weight = torch.zeros_like(fc1_weight) if needs[1] else None
            grad_fc1_bias = fc1_weight.new_zeros(inner_size) if needs[2] else None
            grad_dw_weight = torch.zeros_like(dw_weight) if needs[3] else None
            grad_dw_bias = torch.zeros_like(dw_bias) if needs[4] else None
            grad_fc2_weight = torch.zeros_like(fc2_weight) if needs[5] else None
            for rows in chunk_rows(batch_size, num_tokens, inner_size, dtype, TRAINING_CHUNK_BYTES, whole_images):
                grad_chunk, kept = grads[rows], inner[rows]
                pre = pre_activation(mlp, kept, height, width, dw_weight, dw_bias, dtype)
                if needs[5]:
                    _add_product(grad_fc2_weight, grad_chunk.t(), F.gelu(pre))
                grad_inner = grad_chunk @ fc2_weight_c
                torch.ops.aten.gelu_backward.grad_input(grad_inner, pre, grad_input=grad_inner)
                if mlp.dwconv is not None:
                    grad_map, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                        tokens_to_map(grad_inner.view(-1, num_tokens, inner_size), height, width),
                        tokens_to_map(kept.view(-1, num_tokens, inner_size), height, width),
                        dw_weight.to(dtype), [inner_size], [1, 1], [1, 1], [1, 1], False, [0, 0], inner_size,
                        [True, needs[3], needs[4]],
                    )  # fmt: skip
                    grad_inner = grad_map.permute(0, 2, 3, 1).reshape(-1, inner_size)
                    if needs[3]:
                        grad_dw_weight.add_(grad_weight)
                    if needs[4]:
                        grad_dw_bias.add_(grad_bias)
                if mlp.relu is not None:  # ReLU's backward reads its output, which is what was kept
                    grad_inner = torch.ops.aten.threshold_backward(grad_inner, kept, 0)
                if needs[1]:
                    _add_product(grad_fc1_weight, grad_inner.t(), inputs[rows])
                if needs[2]:
                    grad_fc1_bias.add_(grad_inner.sum(0))
                if needs[0]:
                    torch.mm(grad_inner, fc1_weight_c, out=grad_inputs[rows])
            grad_fc2_bias = grads.sum(0).to(fc2_weight.dtype) if needs[6] else None
        grad_hidden = grad_inputs.view(hidden_states.shape).to(hidden_states.dtype) if needs[0] else None
        return (
            grad_hidden, grad_fc1_weight, grad_fc1_bias, grad_dw_weight, grad_dw_bias, grad_fc2_weight, grad_fc2_bias,
            None, None, None,
        )  # fmt: skip


__all__ = ["SWITCH", "add_residual", "conv_to_tokens", "enabled", "mlp_forward", "tokens_to_map"]
