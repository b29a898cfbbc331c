"""PyTorch Pyramid Vision Transformer family: PVT v1, PVTv2 and PVTv2-linear with one set of modules.

The module tree follows the data path (`stages.{i}.patch_embed`, `stages.{i}.blocks.{j}`,
`stages.{i}.norm`) and keeps the authors' parameter names (q, kv, proj, sr, norm, fc1, dwconv, fc2),
so converting an original checkpoint is a plain renaming table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_hf_pvt import HfPvtConfig
from .cpu_paths_hf_pvt import add_residual, conv_to_tokens, mlp_forward, tokens_to_map


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


class HfPvtMlp(nn.Module):
    """fc1 -> GELU -> fc2; v2 adds a depthwise 3x3 convolution before the GELU (and a ReLU before it, linear)."""

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
        self.hidden_act = config.hidden_act
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(inner_size, hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if (output := mlp_forward(self, hidden_states, height, width)) is not None:
            return output  # the same arithmetic on CPU, faster (cpu_paths_hf_pvt.py)
        hidden_states = self.fc1(hidden_states)
        if self.relu is not None:
            hidden_states = self.relu(hidden_states)
        if self.dwconv is not None:
            hidden_states = self.dwconv(tokens_to_map(hidden_states, height, width)).flatten(2).transpose(1, 2)
        hidden_states = self.act(hidden_states)
        return self.dropout(self.fc2(self.dropout(hidden_states)))


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
            hidden_states = self.pos_dropout(add_residual(hidden_states, position))

        for block in self.blocks:
            hidden_states = block(hidden_states, height, width, **kwargs)
        if self.norm is not None:
            hidden_states = self.norm(hidden_states)

        cls_token = None
        if self.cls_token is not None:
            cls_token, hidden_states = hidden_states[:, 0], hidden_states[:, 1:]
        batch_size, _, channels = hidden_states.shape
        return hidden_states.transpose(1, 2).reshape(batch_size, channels, height, width), cls_token


# What a dense-prediction model (backbone, segmentation, detection) does not use of a classification checkpoint it
# loads: the classifier, and for v1 the cls token and the final norm.
CLASSIFICATION_ONLY_KEYS = [r"^classifier\.", r"^pvt\.stages\.\d+\.cls_token$", r"^pvt\.stages\.\d+\.norm\."]


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

    @property
    def min_input_size(self) -> int:
        """The smallest height and width in pixels this model takes: its encoder's (`HfPvtModel.min_input_size`);
        every head reads the encoder's maps at any size it accepts."""
        return self.pvt.min_input_size

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
        # Fixed by the architecture; computed once here, so that compiled graphs see a constant (a lazily filled
        # attribute made torch.compile trace the model a second time).
        self._min_input_size = self._smallest_input_size()
        self.post_init()

    @property
    def min_input_size(self) -> int:
        """The smallest height/width for which every stage keeps at least one token and every strided
        spatial-reduction convolution (kernel = sr_ratio) still fits in its stage's map."""
        return self._min_input_size

    def _smallest_input_size(self) -> int:
        kernels = [
            stage.blocks[0].attn.sr.kernel_size[0] if stage.blocks and stage.blocks[0].attn.sr is not None else 1
            for stage in self.stages
        ]
        size = 1
        while not all(side >= kernel for side, kernel in zip(self.stage_sizes(size), kernels)):
            size += 1
        return size

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
        if not isinstance(pixel_values, torch.Tensor) and hasattr(pixel_values, "__array__"):
            raise TypeError(
                f"pixel_values must be a torch tensor, got a {type(pixel_values).__name__} of shape "
                f"{getattr(pixel_values, 'shape', '?')}; pass torch.from_numpy(pixel_values), or call the image "
                "processor with return_tensors='pt'."
            )
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


__all__ = [
    "CLASSIFICATION_ONLY_KEYS",
    "HfPvtBackbone",
    "HfPvtForImageClassification",
    "HfPvtModel",
    "HfPvtModelOutput",
    "HfPvtPreTrainedModel",
]
