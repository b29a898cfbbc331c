"""PyTorch Pyramid Vision Transformer family: PVT v1, PVTv2 and PVTv2-linear with one set of modules.

The module tree follows the data path (`stages.{i}.patch_embed`, `stages.{i}.blocks.{j}`,
`stages.{i}.norm`) and keeps the authors' parameter names (q, kv, proj, sr, norm, fc1, dwconv, fc2),
so converting an original checkpoint is a plain renaming table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput, ImageClassifierOutput, SemanticSegmenterOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_hf_pvt import HfPvtConfig
from .detection_hf_pvt import generate_anchors, retinanet_loss


@dataclass
class HfPvtModelOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, hidden_sizes[-1], height/32, width/32)`):
        The last stage's feature map (after the final norm where the model has one).
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_sizes[-1])`):
        The image embedding the classifier reads: the cls token (v1) or the mean of the last stage (v2).
    feature_maps (`tuple(torch.FloatTensor)`):
        One `(batch_size, hidden_sizes[i], height/stride_i, width/stride_i)` map per stage, strides 4 to 32.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, with `output_hidden_states=True`):
        The `(batch_size, tokens, hidden_size)` output of every block.
    attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions=True`):
        The `(batch_size, num_heads, tokens, reduced_tokens)` attention weights of every block.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    feature_maps: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def drop_path(hidden_states: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch of some samples, rescaling the others."""
    if drop_prob == 0.0 or not training:
        return hidden_states
    keep_prob = 1.0 - drop_prob
    shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
    mask = hidden_states.new_empty(shape).bernoulli_(keep_prob)
    return hidden_states * mask / keep_prob


def resize_position_embedding(
    position_embedding: torch.Tensor, grid_size: tuple[int, int], height: int, width: int
) -> torch.Tensor:
    """Bilinearly resize a `(1, grid_h * grid_w, C)` embedding stored for `grid_size` to `height x width`."""
    # An exported graph must serve every size, so it always interpolates (exactly the identity at the stored size).
    if not torch.compiler.is_exporting() and (height, width) == grid_size:
        return position_embedding
    grid = position_embedding.reshape(1, *grid_size, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)
    return grid.flatten(2).transpose(1, 2)


def adaptive_avg_pool2d(feature_map: torch.Tensor, output_size: int) -> torch.Tensor:
    """`F.adaptive_avg_pool2d`, written as two averaging matmuls when exporting: ONNX's translation of the native op
    bakes in the traced map size (wrong results or index errors at other sizes when 7 does not divide the map)."""
    if not torch.compiler.is_exporting():
        return F.adaptive_avg_pool2d(feature_map, output_size)
    height, width = feature_map.shape[-2:]
    rows = _pooling_matrix(height, output_size, feature_map)
    columns = _pooling_matrix(width, output_size, feature_map)
    return torch.einsum("ih,bchw,jw->bcij", rows, feature_map, columns)


def _pooling_matrix(length: int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """`(bins, length)` weights averaging each adaptive-pooling bin: [floor(i*L/bins), ceil((i+1)*L/bins))."""
    index = torch.arange(bins, device=like.device)
    starts, ends = (index * length) // bins, ((index + 1) * length + bins - 1) // bins
    positions = torch.arange(length, device=like.device)
    inside = (positions >= starts[:, None]) & (positions < ends[:, None])
    return inside.to(like.dtype) / (ends - starts)[:, None].to(like.dtype)


def tokens_to_map(hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """View `(B, H*W, C)` tokens as a `(B, C, H, W)` map without copying: the result is channels-last strided,
    which convolutions accept as is and whose `flatten(2).transpose(1, 2)` is again a free, contiguous view."""
    return hidden_states.unflatten(1, (height, width)).permute(0, 3, 1, 2)


def conv_to_tokens(conv: nn.Conv2d, feature_map: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """`conv(feature_map)` as `(B, H'*W', C_out)` tokens, with its output height and width.

    A convolution whose kernel equals its stride (the spatial reductions, v1's patch embeddings) cuts the map
    into disjoint patches, so for CPU inference it runs as one matmul over the gathered patches: faster than the
    convolution kernel for these shapes, and at batch 1 the gather costs less than the channels-last copy of the
    weight that the convolution makes on every call. Same products, summed in another order. Under autograd the
    gather's backward (a scatter) eats the gain, so training keeps `conv`, as do other devices and traced graphs
    (whose backends fuse their own convolutions).
    """
    kernel = conv.kernel_size[0]
    if (
        feature_map.device.type != "cpu"
        or (torch.is_grad_enabled() and (feature_map.requires_grad or conv.weight.requires_grad))
        or conv.kernel_size != (kernel, kernel)
        or conv.stride != conv.kernel_size
        or conv.padding != (0, 0)
        or conv.dilation != (1, 1)
        or conv.groups != 1
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
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


class HfPvtPatchEmbedding(nn.Module):
    """A strided convolution (overlapping in v2) followed by a LayerNorm over channels."""

    def __init__(self, config: HfPvtConfig, in_channels: int, hidden_size: int, patch_size: int, stride: int):
        super().__init__()
        padding = patch_size // 2 if patch_size > stride else 0
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=stride, padding=padding)
        # The authors left this norm at PyTorch's default epsilon (1e-5), unlike the block norms.
        self.norm = nn.LayerNorm(hidden_size, eps=config.embedding_layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        embeddings, height, width = conv_to_tokens(self.proj, pixel_values)
        return self.norm(embeddings), height, width


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    attn_weights = torch.matmul(query, key.transpose(-2, -1)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = attn_weights.softmax(dim=-1)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2)
    return attn_output, attn_weights


class HfPvtAttention(nn.Module):
    """Spatial-reduction attention: queries from every token, keys and values from a reduced map.

    The reduction is a strided convolution (`sr_ratio > 1`), or with `linear_attention` a 7x7 average
    pool and a 1x1 convolution in every stage; with neither, this is plain multi-head self-attention.
    """

    def __init__(self, config: HfPvtConfig, hidden_size: int, num_heads: int, sr_ratio: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.linear = config.linear_attention
        self.q = nn.Linear(hidden_size, hidden_size, bias=config.qkv_bias)
        # One projection for keys and values: output rows [:C] are K, [C:] are V, as in the original.
        self.kv = nn.Linear(hidden_size, 2 * hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.proj_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.pool_size = 7 if self.linear else None
        if self.linear or sr_ratio > 1:
            kernel = 1 if self.linear else sr_ratio
            self.sr = nn.Conv2d(hidden_size, hidden_size, kernel_size=kernel, stride=kernel)
            self.norm = nn.LayerNorm(hidden_size, eps=config.embedding_layer_norm_eps)
            self.act = nn.GELU() if self.linear else None
        else:
            self.sr = None

    def forward(
        self, hidden_states: torch.Tensor, height: int, width: int, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, num_tokens, channels = hidden_states.shape
        query = self.q(hidden_states).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

        reduced = hidden_states
        if self.sr is not None:
            feature_map = tokens_to_map(hidden_states, height, width)
            if self.pool_size is not None:
                feature_map = adaptive_avg_pool2d(feature_map, self.pool_size)
            reduced = self.norm(conv_to_tokens(self.sr, feature_map)[0])
            if self.act is not None:
                reduced = self.act(reduced)
        # (B, N', 2C) -> K and V as (B, heads, N', head_dim) views of one projection, no copies.
        key, value = (
            self.kv(reduced).unflatten(-1, (2, self.num_heads, self.head_dim)).permute(2, 0, 3, 1, 4).unbind(0)
        )

        # Attention weights exist only in the eager path, so asking for them selects it; an empty batch takes it
        # too, since the fused kernels' reshapes cannot infer a size from zero elements.
        use_eager = kwargs.get("output_attentions") or batch_size == 0
        implementation = "eager" if use_eager else self.config._attn_implementation
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=self.config.attention_probs_dropout_prob if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = self.proj(attn_output.reshape(batch_size, num_tokens, channels))
        return self.proj_dropout(attn_output), attn_weights


def _autocast_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype CPU autocast would compute a linear or convolution of `tensor` in (its own dtype without autocast)."""
    if torch.is_autocast_enabled("cpu") and tensor.is_floating_point():
        return torch.get_autocast_dtype("cpu")
    return tensor.dtype


class _CpuMlpFunction(torch.autograd.Function):
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
        with torch.autocast("cpu", enabled=False):
            inputs = hidden_states.to(dtype).reshape(-1, channels)
            inner = F.linear(inputs, fc1_weight.to(dtype), fc1_bias.to(dtype))
            if mlp.relu is not None:
                inner.relu_()
            fc2_weight_t, fc2_bias = fc2_weight.to(dtype).t(), fc2_bias.to(dtype)
            output = inputs.new_empty(batch_size, num_tokens, channels)
            flat_output = output.view(-1, channels)
            for rows in mlp._chunk_rows(batch_size, num_tokens, inner.shape[1], dtype, mlp.cpu_chunk_bytes):
                pre_activation = mlp._pre_activation(inner[rows], height, width, dw_weight, dw_bias, dtype)
                # v1's GELU input is the kept fc1 output itself; v2's is the conv's fresh output, free to overwrite.
                activated = F.gelu(pre_activation) if mlp.dwconv is None else torch.ops.aten.gelu_(pre_activation)
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
            for rows in mlp._chunk_rows(batch_size, num_tokens, inner_size, dtype, mlp.cpu_chunk_bytes):
                grad_chunk, kept = grads[rows], inner[rows]
                pre_activation = mlp._pre_activation(kept, height, width, dw_weight, dw_bias, dtype)
                if needs[5]:
                    _add_product(grad_fc2_weight, grad_chunk.t(), F.gelu(pre_activation))
                grad_inner = grad_chunk @ fc2_weight_c
                torch.ops.aten.gelu_backward.grad_input(grad_inner, pre_activation, grad_input=grad_inner)
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


def _add_product(total: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> None:
    """total += left @ right, fused where the dtypes agree (a bf16 product adds into a float32 total)."""
    if total.dtype == left.dtype:
        total.addmm_(left, right)
    else:
        total.add_(left @ right)


class HfPvtMlp(nn.Module):
    """fc1 -> GELU -> fc2; v2 adds a depthwise 3x3 convolution before the GELU (and a ReLU before it, linear)."""

    cpu_chunk_bytes = 8 * 2**20  # training (see _CpuMlpFunction)
    cpu_inference_chunk_bytes = 2 * 2**20  # measured best of 1-8 MB for batch 1 and 8 on a 2-core EPYC

    def __init__(self, config: HfPvtConfig, hidden_size: int, mlp_ratio: float):
        super().__init__()
        inner_size = int(hidden_size * mlp_ratio)
        self.fc1 = nn.Linear(hidden_size, inner_size)
        # In place is exact and autograd-safe here: ReLU's backward needs only its output, Linear saves no output.
        self.relu = nn.ReLU(inplace=True) if config.linear_attention else None
        self.dwconv = (
            nn.Conv2d(inner_size, inner_size, kernel_size=3, padding=1, groups=inner_size)
            if config.pvt_version == 2
            else None
        )
        self.act = ACT2FN[config.hidden_act]
        # GELU is the only large elementwise pass of the model (inner_size = 4-8x the width). Without autograd,
        # apply it in place: a new tensor of that size costs more in page faults and memory than the math.
        self.inplace_act = torch.ops.aten.gelu_ if config.hidden_act == "gelu" else None
        self.fc2 = nn.Linear(inner_size, hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if hidden_states.device.type != "cpu" or torch.compiler.is_compiling():
            return self._forward(hidden_states, height, width)
        if torch.is_grad_enabled() and (hidden_states.requires_grad or self.fc1.weight.requires_grad):
            if hidden_states.requires_grad and self._fused_backward_applies(hidden_states):
                dwconv = self.dwconv
                return _CpuMlpFunction.apply(
                    hidden_states, self.fc1.weight, self.fc1.bias, dwconv.weight if dwconv is not None else None,
                    dwconv.bias if dwconv is not None else None, self.fc2.weight, self.fc2.bias, self, height, width,
                )  # fmt: skip
            return self._forward(hidden_states, height, width)
        if (
            self.inplace_act is None
            or torch.is_autocast_enabled("cpu")
            or (self.training and self.dropout.p > 0)
            or hidden_states.numel() == 0
        ):
            return self._forward(hidden_states, height, width)
        return self._cpu_inference_forward(hidden_states, height, width)

    def _cpu_inference_forward(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The MLP without autograd on CPU, in cache-sized chunks of rows that all reuse one fc1 buffer and write
        fc2's rows straight into the output. The inner activations (4-8x the width) are the model's largest
        tensors: allocated per call, each would be fresh memory whose page faults cost as much as the matmul
        filling it (measured: a third of a batch-8 forward's MLP time), and in one piece they spill out of the
        caches. Exact: the MLP is per token, except for the 3x3 depthwise conv, which gets whole images or bands of
        rows with one halo row on each side."""
        batch_size, num_tokens, channels = hidden_states.shape
        inputs = hidden_states.reshape(-1, channels)
        output = torch.empty_like(inputs)
        chunks = self._inference_chunks(batch_size, num_tokens, height, width, hidden_states.dtype)
        buffer = inputs.new_empty(max(chunk[0].stop - chunk[0].start for chunk in chunks), self.fc1.out_features)
        fc1_weight_t, fc2_weight_t = self.fc1.weight.t(), self.fc2.weight.t()
        for input_rows, output_rows, band_height, kept_rows in chunks:
            inner = torch.addmm(
                self.fc1.bias, inputs[input_rows], fc1_weight_t, out=buffer[: input_rows.stop - input_rows.start]
            )
            if self.relu is not None:
                inner.relu_()
            if self.dwconv is not None:
                images = tokens_to_map(inner.view(-1, band_height * width, inner.shape[1]), band_height, width)
                inner = self.dwconv(images).permute(0, 2, 3, 1).reshape(-1, inner.shape[1])[kept_rows]
            self.inplace_act(inner)
            torch.addmm(self.fc2.bias, inner, fc2_weight_t, out=output[output_rows])
        return output.view_as(hidden_states)

    def _inference_chunks(
        self, batch_size: int, num_tokens: int, height: int, width: int, dtype: torch.dtype
    ) -> list[tuple[slice, slice, int, slice]]:
        """`(input rows, output rows, band height, kept rows of the band)` per chunk of the flattened tokens: any
        rows (v1, cls token included), whole images (v2), or for v2 images larger than a chunk, bands of image rows
        read with one halo row above and below, of which only the band's own rows are kept."""
        inner_size, chunk_bytes = self.fc1.out_features, self.cpu_inference_chunk_bytes
        step = max(1, chunk_bytes // (inner_size * dtype.itemsize))
        if self.dwconv is None or step >= num_tokens:
            rows = self._chunk_rows(batch_size, num_tokens, inner_size, dtype, chunk_bytes)
            return [(chunk, chunk, height, slice(None)) for chunk in rows]
        band_rows, chunks = max(1, step // width), []
        for image_start in range(0, batch_size * num_tokens, num_tokens):
            for top in range(0, height, band_rows):
                bottom = min(top + band_rows, height)
                first, last = max(top - 1, 0), min(bottom + 1, height)
                chunks.append((
                    slice(image_start + first * width, image_start + last * width),
                    slice(image_start + top * width, image_start + bottom * width),
                    last - first,
                    slice((top - first) * width, (bottom - first) * width),
                ))  # fmt: skip
        return chunks

    def _fused_backward_applies(self, hidden_states: torch.Tensor) -> bool:
        """Whether `_CpuMlpFunction` computes exactly what this module's own ops would: GELU and no active dropout,
        not under torch.func transforms (whose wrapped tensors a hand-written backward cannot see through)."""
        return (
            self.inplace_act is not None
            and (self.dropout.p == 0 or not self.training)
            and not torch._C._functorch.is_functorch_wrapped_tensor(hidden_states)
        )

    def _chunk_rows(
        self, batch_size: int, num_tokens: int, inner_size: int, dtype: torch.dtype, chunk_bytes: int
    ) -> list[slice]:
        """Rows of the flattened `(batch * tokens, inner)` activations, about `chunk_bytes` of them each: any rows
        for v1, whole images for v2 (whose depthwise conv reads the neighbouring rows)."""
        step = max(1, chunk_bytes // (inner_size * dtype.itemsize))
        if self.dwconv is not None:
            step = num_tokens * max(1, step // num_tokens)
        total = batch_size * num_tokens
        return [slice(start, min(start + step, total)) for start in range(0, total, step)]

    def _pre_activation(
        self, inner: torch.Tensor, height: int, width: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
        dtype: torch.dtype,
    ) -> torch.Tensor:  # fmt: skip
        """The GELU input for rows of fc1's (ReLU'd) output: the rows themselves (v1) or v2's depthwise conv of
        them, computed in `dtype`, as `(rows, inner)`."""
        if self.dwconv is None:
            return inner
        feature_map = tokens_to_map(inner.view(-1, height * width, inner.shape[1]), height, width)
        convolved = F.conv2d(feature_map, weight.to(dtype), bias.to(dtype), padding=1, groups=inner.shape[1])
        return convolved.permute(0, 2, 3, 1).reshape(inner.shape)

    def _forward(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        hidden_states = self.fc1(hidden_states)
        if self.relu is not None:
            hidden_states = self.relu(hidden_states)
        if self.dwconv is not None:
            hidden_states = self.dwconv(tokens_to_map(hidden_states, height, width)).flatten(2).transpose(1, 2)
        if self.inplace_act is not None and not hidden_states.requires_grad:
            hidden_states = self.inplace_act(hidden_states)
        else:
            hidden_states = self.act(hidden_states)
        return self.dropout(self.fc2(self.dropout(hidden_states)))


def add_residual(branch: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """branch + residual, written into `branch` (a fresh tensor that no backward saved) where that is free. Not
    when autograd records a view: a linear's 3-d output is a view of its 2-d result, and an in-place write into a
    view makes backward rebuild the whole base (zeros, as_strided, copies), costlier than a new tensor."""
    if branch.requires_grad and torch.is_grad_enabled() and branch._is_view():
        return branch + residual
    return branch.add_(residual)


class HfPvtBlock(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), with stochastic depth."""

    def __init__(
        self, config: HfPvtConfig, hidden_size: int, num_heads: int, mlp_ratio: float, sr_ratio: int, drop_path: float
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.attn = HfPvtAttention(config, hidden_size, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = HfPvtMlp(config, hidden_size, mlp_ratio)
        self.drop_path = drop_path

    def forward(self, hidden_states: torch.Tensor, height: int, width: int, **kwargs) -> torch.Tensor:
        attn_output, _ = self.attn(self.norm1(hidden_states), height, width, **kwargs)
        hidden_states = add_residual(drop_path(attn_output, self.drop_path, self.training), hidden_states)
        mlp_output = self.mlp(self.norm2(hidden_states), height, width)
        return add_residual(drop_path(mlp_output, self.drop_path, self.training), hidden_states)

    def extra_repr(self) -> str:
        return f"drop_path={self.drop_path}"


class HfPvtStage(nn.Module):
    """Patch embedding (+ v1 position embedding and cls token) -> blocks -> optional norm -> feature map."""

    def __init__(
        self, config: HfPvtConfig, index: int, drop_paths: list[float], with_cls_token: bool, with_norm: bool
    ):
        super().__init__()
        hidden_size = config.hidden_sizes[index]
        in_channels = config.num_channels if index == 0 else config.hidden_sizes[index - 1]
        self.patch_embed = HfPvtPatchEmbedding(
            config, in_channels, hidden_size, config.patch_sizes[index], config.strides[index]
        )
        self.pos_embed = None
        if config.pvt_version == 1:
            grid = config.image_size // math.prod(config.strides[: index + 1])
            self.grid_size = (grid, grid)
            # v1's last stage stores one extra leading slot for the cls token, even where no cls token is used.
            self.num_prefix_slots = 1 if index == config.num_stages - 1 else 0
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_slots + grid * grid, hidden_size))
            self.pos_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size)) if with_cls_token else None
        self.blocks = nn.ModuleList(
            HfPvtBlock(
                config,
                hidden_size,
                config.num_attention_heads[index],
                config.mlp_ratios[index],
                config.sr_ratios[index],
                drop_path,
            )
            for drop_path in drop_paths
        )
        self.norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps) if with_norm else None

    def forward(self, feature_map: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return this stage's `(B, C, H, W)` feature map and its cls token (or None)."""
        hidden_states, height, width = self.patch_embed(feature_map)
        if self.pos_embed is not None:
            # The cls slot is kept out of the resize: only the spatial grid is interpolated.
            position = resize_position_embedding(
                self.pos_embed[:, self.num_prefix_slots :], self.grid_size, height, width
            )
            if self.cls_token is not None:
                cls_token = self.cls_token.expand(hidden_states.shape[0], -1, -1)
                hidden_states = torch.cat((cls_token, hidden_states), dim=1)
                position = torch.cat((self.pos_embed[:, :1], position), dim=1)
            # In place: the sum goes into the patch-embedding norm's (or the concatenation's) fresh output.
            hidden_states = self.pos_dropout(hidden_states.add_(position))

        for block in self.blocks:
            hidden_states = block(hidden_states, height, width, **kwargs)
        if self.norm is not None:
            hidden_states = self.norm(hidden_states)

        cls_token = None
        if self.cls_token is not None:
            cls_token, hidden_states = hidden_states[:, 0], hidden_states[:, 1:]
        batch_size, _, channels = hidden_states.shape
        return hidden_states.transpose(1, 2).reshape(batch_size, channels, height, width), cls_token


class HfPvtPreTrainedModel(PreTrainedModel):
    config: HfPvtConfig
    config_class = HfPvtConfig
    base_model_prefix = "pvt"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["HfPvtBlock"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs = {
        "hidden_states": OutputRecorder(HfPvtBlock, capture_initial_hidden_state=False),
        "attentions": OutputRecorder(HfPvtAttention, index=1),
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The authors' initialisation: truncated-normal linears, fan-out normal convolutions."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            init.normal_(module.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm2d):
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, HfPvtStage):
            if module.pos_embed is not None:
                init.trunc_normal_(module.pos_embed, std=std)
            if module.cls_token is not None:
                init.trunc_normal_(module.cls_token, std=std)


class HfPvtModel(HfPvtPreTrainedModel):
    """The four-stage encoder.

    With `dense_prediction=True` (backbones, segmentation) v1 follows the authors' dense-prediction code:
    no cls token and no final norm, so the last stage is a plain spatial map like the others.
    """

    def __init__(self, config: HfPvtConfig, dense_prediction: bool = False):
        super().__init__(config)
        self.dense_prediction = dense_prediction
        uses_cls_token = config.pvt_version == 1 and not dense_prediction
        total_depth = sum(config.depths)
        drop_paths = [config.drop_path_rate * i / max(total_depth - 1, 1) for i in range(total_depth)]
        self._min_input_size = None
        self.stages = nn.ModuleList()
        for index, depth in enumerate(config.depths):
            first = sum(config.depths[:index])
            is_last = index == config.num_stages - 1
            self.stages.append(
                HfPvtStage(
                    config,
                    index,
                    drop_paths[first : first + depth],
                    with_cls_token=uses_cls_token and is_last,
                    # v2 normalises every stage; v1 has one final norm, over the cls token and the last stage.
                    with_norm=config.pvt_version == 2 or (uses_cls_token and is_last),
                )
            )
        self.post_init()

    @property
    def min_input_size(self) -> int:
        """The smallest height/width for which every stage keeps at least one token and every strided
        spatial-reduction convolution (kernel = sr_ratio) still fits in its stage's map."""
        if self._min_input_size is None:
            kernels = [
                stage.blocks[0].attn.sr.kernel_size[0] if stage.blocks and stage.blocks[0].attn.sr is not None else 1
                for stage in self.stages
            ]
            size = 1
            while not all(side >= kernel for side, kernel in zip(self.stage_sizes(size), kernels)):
                size += 1
            self._min_input_size = size
        return self._min_input_size

    def stage_sizes(self, size: int) -> list[int]:
        """The side of each stage's feature map for an input side of `size` pixels."""
        sizes = []
        for stage in self.stages:
            conv = stage.patch_embed.proj
            size = (size + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
            sizes.append(size)
        return sizes

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The pixels in the model's dtype, or a ValueError/TypeError that says what to change."""
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values)
            raise ValueError(
                f"pixel_values must be a (batch, channels, height, width) tensor, got {shape}; "
                "use the image processor, or add a batch dimension with pixel_values[None]."
            )
        channels, height, width = pixel_values.shape[1:]
        if channels != self.config.num_channels:
            raise ValueError(
                f"pixel_values has {channels} channels but the model expects {self.config.num_channels}; "
                "convert the images (the image processor makes RGB) or set config.num_channels."
            )
        minimum = self.min_input_size
        if height < minimum or width < minimum:
            raise ValueError(
                f"Images of {height}x{width} are too small: every stage needs at least one token (and at least "
                f"sr_ratio tokens per side where keys are reduced), so height and width must be at least {minimum} "
                "pixels. Resize or pad the images."
            )
        if not pixel_values.is_floating_point():
            raise TypeError(
                f"pixel_values must be floating point (normalised pixels), got {pixel_values.dtype}; run the images "
                "through the image processor (raw uint8 pixels are not normalised)."
            )
        # Another float precision than the weights' (float64 from numpy, bf16 from a loader) is cast, as convolutions
        # require one dtype; under autocast the convolution then casts as usual.
        return pixel_values.to(self.stages[0].patch_embed.proj.weight.dtype)

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(self, pixel_values: torch.Tensor, **kwargs) -> HfPvtModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Normalised images of any size at least `min_input_size` (32 for v1), square or not.
        """
        pixel_values = self._check_pixel_values(pixel_values)
        # The recorder collects attention weights when the call or the config asks; the attention layers must see
        # the same answer, or they take the fused path and the weights come back empty.
        kwargs["output_attentions"] = kwargs.get("output_attentions", self.config.output_attentions)
        feature_maps = []
        feature_map, cls_token = pixel_values, None
        for stage in self.stages:
            feature_map, cls_token = stage(feature_map, **kwargs)
            feature_maps.append(feature_map)
        pooled = cls_token if cls_token is not None else feature_map.flatten(2).mean(-1)
        return HfPvtModelOutput(last_hidden_state=feature_map, pooler_output=pooled, feature_maps=tuple(feature_maps))


class HfPvtForImageClassification(HfPvtPreTrainedModel):
    """The encoder with a linear classifier on its pooled output (v1: cls token, v2: mean of the last stage)."""

    def __init__(self, config: HfPvtConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.pvt = HfPvtModel(config)
        self.classifier = (
            nn.Linear(config.hidden_sizes[-1], config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()

    @can_return_tuple
    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs
    ) -> ImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Targets for the loss chosen by `config.problem_type` (regression, single- or multi-label).
        """
        outputs = self.pvt(pixel_values, **kwargs)
        logits = self.classifier(outputs.pooler_output)
        loss = self.loss_function(labels, logits, self.config, **kwargs) if labels is not None else None
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class HfPvtBackbone(BackboneMixin, HfPvtModel):
    """Multi-scale feature maps at strides 4/8/16/32 for detection and segmentation heads (AutoBackbone)."""

    def __init__(self, config: HfPvtConfig):
        super().__init__(config, dense_prediction=True)
        self.num_features = list(config.hidden_sizes)

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, **kwargs) -> BackboneOutput:
        outputs = HfPvtModel.forward(self, pixel_values, **kwargs)
        feature_maps = tuple(outputs.feature_maps[self.stage_names.index(name)] for name in self.out_features)
        return BackboneOutput(
            feature_maps=feature_maps, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class HfPvtFeaturePyramid(nn.Module):
    """FPN neck (MMDetection's `FPN`): 1x1 lateral convs to one width on the stages from `start_level` on, a top-down
    pass of upsample-and-add, 3x3 output convs, then `num_extra_levels` stride-2 3x3 convs: the first on the last
    input map (`add_extra_convs='on_input'`), the next ones on the previous extra level, with no ReLU between."""

    def __init__(self, in_channels: list[int], out_channels: int, start_level: int = 0, num_extra_levels: int = 0):
        super().__init__()
        self.start_level = start_level
        used_channels = in_channels[start_level:]
        self.lateral_convs = nn.ModuleList(
            nn.Conv2d(channels, out_channels, kernel_size=1) for channels in used_channels
        )
        self.fpn_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1) for _ in used_channels
        )
        for level in range(num_extra_levels):
            source_channels = in_channels[-1] if level == 0 else out_channels
            self.fpn_convs.append(nn.Conv2d(source_channels, out_channels, kernel_size=3, stride=2, padding=1))

    def forward(self, feature_maps: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        inputs = feature_maps[self.start_level :]
        laterals = [conv(feature_map) for conv, feature_map in zip(self.lateral_convs, inputs)]
        for level in range(len(laterals) - 1, 0, -1):
            # Upsample to the finer map's exact size, not by 2: inputs that are no multiple of 32 give odd sizes.
            coarse = F.interpolate(laterals[level], size=laterals[level - 1].shape[-2:], mode="nearest")
            laterals[level - 1] = laterals[level - 1] + coarse
        outputs = [conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals)]
        extra_input = inputs[-1]
        for conv in self.fpn_convs[len(laterals) :]:
            extra_input = conv(extra_input)
            outputs.append(extra_input)
        return outputs


class HfPvtSemanticFpnConv(nn.Module):
    """3x3 conv -> GroupNorm(32) -> ReLU, optionally followed by a 2x bilinear upsample."""

    def __init__(self, in_channels: int, out_channels: int, upsample: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        # The authors trained this head with SyncBN over 16 images on 8 GPUs. A fine-tune on one device runs at
        # batch sizes of 1-4, where batch statistics are noise and BN's train/eval behaviour drifts apart;
        # GroupNorm(32) (the Panoptic FPN choice) does not depend on the batch and behaves the same in eval.
        self.norm = nn.GroupNorm(32, out_channels)
        self.act = nn.ReLU()
        self.upsample = upsample

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.act(self.norm(self.conv(hidden_states)))
        if self.upsample:
            hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="bilinear", align_corners=False)
        return hidden_states


class HfPvtSemanticFpnHead(nn.Module):
    """Semantic FPN head: each FPN level is brought to stride 4 by conv(+2x upsample) steps, the levels are summed,
    and a 1x1 classifier predicts `num_labels` logits at a quarter of the input resolution."""

    def __init__(self, config: HfPvtConfig):
        super().__init__()
        strides = [math.prod(config.strides[: index + 1]) for index in range(config.num_stages)]
        self.scale_heads = nn.ModuleList()
        for stride in strides:
            num_upsamples = round(math.log2(stride / strides[0]))
            self.scale_heads.append(
                nn.ModuleList(
                    HfPvtSemanticFpnConv(
                        config.decoder_hidden_size if step == 0 else config.decoder_head_size,
                        config.decoder_head_size,
                        upsample=num_upsamples > 0,
                    )
                    for step in range(max(num_upsamples, 1))
                )
            )
        self.dropout = nn.Dropout2d(config.classifier_dropout_prob)
        self.classifier = nn.Conv2d(config.decoder_head_size, config.num_labels, kernel_size=1)

    def forward(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        merged = None
        for scale_head, hidden_states in zip(self.scale_heads, pyramid):
            for layer in scale_head:
                hidden_states = layer(hidden_states)
            if merged is None:
                merged = hidden_states
            else:
                # Repeated 2x upsampling overshoots by a pixel when a side is no multiple of 32: align to stride 4.
                merged = merged + F.interpolate(
                    hidden_states, size=merged.shape[-2:], mode="bilinear", align_corners=False
                )
        return self.classifier(self.dropout(merged))


class HfPvtForSemanticSegmentation(HfPvtPreTrainedModel):
    """The encoder (dense-prediction mode) with the paper's Semantic FPN: an FPN neck and a light convolutional head.

    The base model is `pvt`, as in the classifier, so ImageNet checkpoints load into it (their `classifier`, and for
    v1 the cls token and final norm, are unused here).
    """

    _keys_to_ignore_on_load_unexpected = [
        r"^classifier\.",
        r"^pvt\.stages\.\d+\.cls_token$",
        r"^pvt\.stages\.\d+\.norm\.",
    ]

    def __init__(self, config: HfPvtConfig):
        super().__init__(config)
        if config.decoder_head_size % 32:
            raise ValueError(
                f"decoder_head_size {config.decoder_head_size} must be a multiple of 32: the Semantic FPN head "
                "normalises with GroupNorm(32). Use e.g. 128 (the paper) or 32 for small experiments."
            )
        if config.num_labels < 2:
            raise ValueError(
                f"Semantic segmentation needs num_labels >= 2 (got {config.num_labels}); for a binary task use two "
                "labels, background and foreground."
            )
        self.pvt = HfPvtModel(config, dense_prediction=True)
        self.neck = HfPvtFeaturePyramid(config.hidden_sizes, config.decoder_hidden_size)
        self.decode_head = HfPvtSemanticFpnHead(config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # mmseg's classifier init: small weights start the logits near uniform, so the first loss is ~log(num_labels).
        if module is self.decode_head.classifier:
            init.normal_(module.weight, mean=0.0, std=0.01)
            init.zeros_(module.bias)

    def _check_labels(self, labels: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """The labels as a LongTensor on the logits' device, or a ValueError/TypeError saying what to change."""
        if isinstance(labels, np.ndarray):
            labels = torch.from_numpy(labels)
        if not isinstance(labels, torch.Tensor):
            raise TypeError(
                f"labels must be a torch.Tensor (or numpy array) of class ids, got {type(labels).__name__}; pass the "
                "image processor's `labels`."
            )
        if labels.ndim != 3 or labels.shape[0] != pixel_values.shape[0]:
            raise ValueError(
                f"labels must be a (batch, height, width) tensor of class ids with the batch size of pixel_values "
                f"({pixel_values.shape[0]}), got shape {tuple(labels.shape)}. Pass the image processor's `labels` "
                "(segmentation_maps=...), not one-hot or channel-first masks."
            )
        if labels.shape[1] == 0 or labels.shape[2] == 0:
            raise ValueError(f"labels of shape {tuple(labels.shape)} hold no pixels: give each image its (H, W) map.")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must hold integer class ids, got dtype {labels.dtype}; use labels.long().")
        ignore_index = self.config.semantic_loss_ignore_index
        valid = labels[labels != ignore_index]
        if valid.numel() and (valid.min() < 0 or valid.max() >= self.config.num_labels):
            raise ValueError(
                f"labels hold class ids in [{int(valid.min())}, {int(valid.max())}] but the model predicts "
                f"{self.config.num_labels} labels (ids 0..{self.config.num_labels - 1}, {ignore_index} ignored). "
                "Set num_labels, or reduce ADE20K-style labels with the image processor's do_reduce_labels=True."
            )
        return labels.to(device=pixel_values.device, dtype=torch.long)

    @can_return_tuple
    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs
    ) -> SemanticSegmenterOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            Class ids per pixel, at any resolution (the logits are upsampled to it for the cross-entropy);
            `config.semantic_loss_ignore_index` (255) marks pixels left out of the loss.

        Returns `logits` of shape `(batch_size, num_labels, height/4, width/4)`; use the image processor's
        `post_process_semantic_segmentation` for maps at the original image size.
        """
        if labels is not None:
            labels = self._check_labels(labels, pixel_values)
        outputs = self.pvt(pixel_values, **kwargs)
        logits = self.decode_head(self.neck(outputs.feature_maps))

        loss = None
        if labels is not None:
            upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            ignore_index = self.config.semantic_loss_ignore_index
            # The mean over labelled pixels; a batch whose pixels are all ignored contributes 0, not 0/0 = NaN.
            total = F.cross_entropy(upsampled, labels, ignore_index=ignore_index, reduction="sum")
            loss = total / (labels != ignore_index).sum().clamp(min=1)
        return SemanticSegmenterOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


@dataclass
class HfPvtObjectDetectionOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*, with `labels`):
        `loss_dict["loss_cls"] + loss_dict["loss_bbox"]`.
    loss_dict (`dict[str, torch.FloatTensor]`, *optional*, with `labels`):
        The sigmoid focal loss and the L1 box-delta loss, each normalised by the number of positive anchors.
    logits (`tuple(torch.FloatTensor)`):
        Per pyramid level (strides 8 to 128), `(batch_size, num_anchors * num_labels, height_l, width_l)` class
        logits before the sigmoid (MMDetection's `cls_scores`).
    pred_box_deltas (`tuple(torch.FloatTensor)`):
        Per level, `(batch_size, num_anchors * 4, height_l, width_l)` (dx, dy, dw, dh) deltas from the anchors
        (MMDetection's `bbox_preds`).
    anchors (`tuple(torch.FloatTensor)`):
        Per level, `(height_l * width_l * num_anchors, 4)` anchor boxes (x1, y1, x2, y2) in input pixels, in the
        order of `logits[l].permute(0, 2, 3, 1).reshape(batch_size, -1, num_labels)`.
    image_sizes (`torch.LongTensor` of shape `(batch_size, 2)`):
        The (height, width) of each image inside `pixel_values` without its padding (from `pixel_mask`): boxes are
        clipped to it. The image processor's `post_process_object_detection` turns all of this into boxes.
    """

    loss: torch.FloatTensor | None = None
    loss_dict: dict[str, torch.FloatTensor] | None = None
    logits: tuple[torch.FloatTensor, ...] | None = None
    pred_box_deltas: tuple[torch.FloatTensor, ...] | None = None
    anchors: tuple[torch.FloatTensor, ...] | None = None
    image_sizes: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class HfPvtRetinaHead(nn.Module):
    """RetinaNet's head, shared by every pyramid level: two branches of `detection_num_convs` 3x3 conv + ReLU, then
    a 3x3 conv to `num_anchors * num_labels` class logits and one to `num_anchors * 4` box deltas."""

    def __init__(self, config: HfPvtConfig, num_anchors: int):
        super().__init__()
        width = config.detection_feat_channels
        in_channels = [config.decoder_hidden_size] + [width] * (config.detection_num_convs - 1)
        self.cls_convs = nn.ModuleList(nn.Conv2d(c, width, kernel_size=3, padding=1) for c in in_channels)
        self.reg_convs = nn.ModuleList(nn.Conv2d(c, width, kernel_size=3, padding=1) for c in in_channels)
        last = width if config.detection_num_convs else config.decoder_hidden_size
        self.retina_cls = nn.Conv2d(last, num_anchors * config.num_labels, kernel_size=3, padding=1)
        self.retina_reg = nn.Conv2d(last, num_anchors * 4, kernel_size=3, padding=1)

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls_features = reg_features = feature_map
        for conv in self.cls_convs:
            cls_features = F.relu(conv(cls_features))
        for conv in self.reg_convs:
            reg_features = F.relu(conv(reg_features))
        return self.retina_cls(cls_features), self.retina_reg(reg_features)


class HfPvtForObjectDetection(HfPvtPreTrainedModel):
    """The papers' RetinaNet detector (SPEC §6): the encoder in dense-prediction mode, an FPN over stages 2-4 with two
    extra stride-2 levels (P3-P7, strides 8-128) and the shared RetinaNet head with 9 anchors per location.

    Module names follow MMDetection's (`neck.lateral_convs.k`, `neck.fpn_convs.k`, `bbox_head.cls_convs.k`,
    `bbox_head.retina_cls`, ...), so the authors' detectors convert by renaming. Images of different sizes share a
    batch by padding (bottom/right) with a `pixel_mask`, as the image processor does. Anchor targets, losses and
    post-processing (decoding, per-level top-k, class-wise NMS) are the small functions of `detection_hf_pvt`.
    """

    _keys_to_ignore_on_load_unexpected = HfPvtForSemanticSegmentation._keys_to_ignore_on_load_unexpected
    strides = (8, 16, 32, 64, 128)

    def __init__(self, config: HfPvtConfig):
        super().__init__(config)
        if config.num_stages != 4:
            raise ValueError(f"RetinaNet reads stages 2-4 of a 4-stage encoder; this config has {config.num_stages}.")
        if config.num_labels < 1:
            raise ValueError(f"Object detection needs num_labels >= 1 (got {config.num_labels}).")
        self.pvt = HfPvtModel(config, dense_prediction=True)
        self.neck = HfPvtFeaturePyramid(
            config.hidden_sizes, config.decoder_hidden_size, start_level=1, num_extra_levels=2
        )
        self.num_anchors = len(config.anchor_ratios) * config.anchor_scales_per_octave
        self.bbox_head = HfPvtRetinaHead(config, self.num_anchors)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # MMDetection's RetinaNet init: Xavier-uniform FPN convs, N(0, 0.01) head convs, and a class bias that
        # starts every anchor at probability 0.01, so the focal loss is not swamped by easy negatives at first.
        if isinstance(module, nn.Conv2d) and any(module is conv for conv in self.neck.modules()):
            init.xavier_uniform_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d) and any(module is conv for conv in self.bbox_head.modules()):
            init.normal_(module.weight, mean=0.0, std=0.01)
            init.constant_(module.bias, -math.log((1 - 0.01) / 0.01) if module is self.bbox_head.retina_cls else 0.0)

    def _image_sizes(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None) -> torch.Tensor:
        batch_size, _, height, width = pixel_values.shape
        if pixel_mask is None:
            return torch.tensor([[height, width]], device=pixel_values.device).expand(batch_size, 2)
        if not isinstance(pixel_mask, torch.Tensor) or tuple(pixel_mask.shape) != (batch_size, height, width):
            shape = tuple(pixel_mask.shape) if isinstance(pixel_mask, torch.Tensor) else type(pixel_mask).__name__
            raise ValueError(
                f"pixel_mask must be a (batch, height, width) tensor matching pixel_values "
                f"{tuple(pixel_values.shape)}, got {shape}; pass the image processor's pixel_mask, or none for "
                "unpadded images."
            )
        valid = pixel_mask.bool()
        sizes = torch.stack((valid.any(dim=2).sum(dim=1), valid.any(dim=1).sum(dim=1)), dim=1)
        if bool((sizes == 0).any()):
            raise ValueError("pixel_mask marks an image with no valid pixel: every image needs at least one.")
        return sizes

    def _targets(self, labels: list[dict[str, torch.Tensor]], pixel_values: torch.Tensor) -> list[dict]:
        """Normalised (cx, cy, w, h) boxes relative to `pixel_values` -> absolute (x1, y1, x2, y2) input pixels."""
        if not isinstance(labels, (list, tuple)) or len(labels) != pixel_values.shape[0]:
            raise ValueError(
                f"labels must be a list with one dict per image ({pixel_values.shape[0]}), got "
                f"{type(labels).__name__} of length {len(labels) if isinstance(labels, (list, tuple)) else '-'}."
            )
        height, width = pixel_values.shape[-2:]
        scale = pixel_values.new_tensor([width, height, width, height])
        targets = []
        for index, target in enumerate(labels):
            if not isinstance(target, Mapping) or not {"class_labels", "boxes"} <= set(target):
                raise ValueError(
                    f"labels[{index}] must be a dict with 'class_labels' (n,) and 'boxes' (n, 4), normalised "
                    "(center_x, center_y, width, height): the image processor's `labels`."
                )
            boxes = torch.as_tensor(target["boxes"], dtype=pixel_values.dtype, device=pixel_values.device)
            classes = torch.as_tensor(target["class_labels"], device=pixel_values.device)
            if boxes.ndim != 2 or boxes.shape[-1] != 4 or classes.shape != boxes.shape[:1]:
                raise ValueError(
                    f"labels[{index}]: boxes must be (n, 4) and class_labels (n,), got {tuple(boxes.shape)} and "
                    f"{tuple(classes.shape)}."
                )
            if classes.numel() and (
                classes.is_floating_point() or int(classes.min()) < 0 or int(classes.max()) >= self.config.num_labels
            ):
                raise ValueError(
                    f"labels[{index}]: class_labels must be integer ids in [0, {self.config.num_labels}); map the "
                    "dataset's category ids to contiguous ids (id2label) first."
                )
            if not bool(torch.isfinite(boxes).all()) or bool((boxes[:, 2:] < 0).any()):
                raise ValueError(f"labels[{index}]: boxes must be finite with non-negative width and height.")
            centers, sizes = boxes[:, :2], boxes[:, 2:]
            corners = torch.cat((centers - sizes / 2, centers + sizes / 2), dim=1) * scale
            targets.append({"boxes": corners, "class_labels": classes.long()})
        return targets

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        labels: list[dict[str, torch.Tensor]] | None = None,
        **kwargs,
    ) -> HfPvtObjectDetectionOutput:
        r"""
        pixel_mask (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            1 for real pixels, 0 for padding (bottom/right), as the image processor returns it.
        labels (`list[dict]`, *optional*):
            One dict per image with `class_labels` (`(n,)` ids) and `boxes` (`(n, 4)` normalised (center_x,
            center_y, width, height) relative to `pixel_values`' height and width), as Transformers' detection
            models take them. Images without objects have `n = 0`.
        """
        image_sizes = self._image_sizes(pixel_values, pixel_mask)
        targets = self._targets(labels, pixel_values) if labels is not None else None
        outputs = self.pvt(pixel_values, **kwargs)
        logits, box_deltas = zip(*(self.bbox_head(level) for level in self.neck(outputs.feature_maps)))
        anchors = generate_anchors(
            [tuple(level.shape[-2:]) for level in logits],
            self.strides,
            octave_base_scale=self.config.anchor_octave_base_scale,
            scales_per_octave=self.config.anchor_scales_per_octave,
            ratios=self.config.anchor_ratios,
            # float32 whatever the model's dtype: bf16 cannot hold anchor corners such as 1000.5 exactly.
            dtype=torch.float32,
            device=logits[0].device,
        )

        loss = loss_dict = None
        if targets is not None:
            # MMDetection's pad_shape: each image padded to a multiple of 32 (capped by the batch's padded size);
            # anchors centred beyond it are neither positive nor negative.
            input_size = image_sizes.new_tensor(pixel_values.shape[-2:])
            pad_shapes = torch.minimum((image_sizes + 31) // 32 * 32, input_size)
            loss_dict = retinanet_loss(
                list(logits),
                list(box_deltas),
                anchors,
                targets,
                [tuple(shape) for shape in pad_shapes.tolist()],
                num_classes=self.config.num_labels,
                alpha=self.config.focal_loss_alpha,
                gamma=self.config.focal_loss_gamma,
                pos_iou_thr=self.config.detection_pos_iou_threshold,
                neg_iou_thr=self.config.detection_neg_iou_threshold,
                strides=self.strides,
            )
            loss = loss_dict["loss_cls"] + loss_dict["loss_bbox"]
        return HfPvtObjectDetectionOutput(
            loss=loss,
            loss_dict=loss_dict,
            logits=logits,
            pred_box_deltas=box_deltas,
            anchors=tuple(anchors),
            image_sizes=image_sizes,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = [
    "HfPvtBackbone",
    "HfPvtForObjectDetection",
    "HfPvtForImageClassification",
    "HfPvtForSemanticSegmentation",
    "HfPvtModel",
    "HfPvtModelOutput",
    "HfPvtObjectDetectionOutput",
    "HfPvtPreTrainedModel",
]
