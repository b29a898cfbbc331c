"""Semantic FPN on a PVT encoder, the papers' ADE20K segmentation model: the FPN neck and a light convolutional head
(the authors' `fpn_pvt_*_ade20k_40k.py` configs, MMSegmentation's `FPNHead`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.utils.generic import can_return_tuple

from .configuration_hf_pvt import HfPvtConfig
from .cpu_paths_hf_pvt import enabled as fast_paths_enabled
from .dense_inputs_hf_pvt import image_sizes
from .modeling_hf_pvt import CLASSIFICATION_ONLY_KEYS, HfPvtModel, HfPvtPreTrainedModel
from .neck_hf_pvt import HfPvtFeaturePyramid


@dataclass
class HfPvtSemanticSegmenterOutput(SemanticSegmenterOutput):
    r"""
    Transformers' `SemanticSegmenterOutput` (`loss`, `logits` (batch_size, num_labels, height/4, width/4),
    `hidden_states`, `attentions`), and with a `pixel_mask`:

    logits_sizes (`torch.LongTensor` of shape `(batch_size, 2)`, *optional*):
        The (height, width) of each image's own logits, top-left in `logits`: the map its `pixel_mask` area gives
        (the rest is padding). `post_process_semantic_segmentation` reads only these. In evaluation mode, images of
        different sizes are computed each at its own size, so that an image's logits never depend on the other
        images of its batch; their padding then holds zeros.
    """

    logits_sizes: torch.LongTensor | None = None


class HfPvtSemanticFpnConv(nn.Module):
    """3x3 conv (no bias) -> BatchNorm -> ReLU: MMSegmentation's `ConvModule` with `norm_cfg=SyncBN`, its norm under
    the same name `bn`, so a released checkpoint's `.bn.*` tensors (running statistics included) place by name."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(hidden_states)))


class HfPvtSemanticFpnGroupNormConv(nn.Module):
    """3x3 conv -> GroupNorm(32) -> ReLU, then a 2x bilinear upsample when `upsample`: the head of
    `semantic_head_norm="group_norm"`, in the layout of the folders hf_pvt saved before it had the BatchNorm head."""

    def __init__(self, in_channels: int, out_channels: int, upsample: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        # Batch statistics of 1-4 images are noise, and BatchNorm's training and evaluation then drift apart;
        # GroupNorm(32) (the Panoptic FPN choice) does not depend on the batch.
        self.norm = nn.GroupNorm(32, out_channels)
        self.act = nn.ReLU()
        self.upsample = upsample

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.act(self.norm(self.conv(hidden_states)))
        if self.upsample:
            hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="bilinear", align_corners=False)
        return hidden_states


def _scale_head(config: HfPvtConfig, num_upsamples: int) -> nn.Sequential:
    """One pyramid level brought to stride 4: `max(1, num_upsamples)` conv steps, each followed by a 2x bilinear
    upsample on the coarser levels.

    The BatchNorm head keeps each upsample as a module of its own, as MMSegmentation's `FPNHead` does, so that the
    module indices, and with them the released checkpoints' keys, are `scale_heads.{level}.{0, 2, 4}`; the GroupNorm
    head upsamples inside each step (`scale_heads.{level}.{0, 1, 2}`), as the folders saved with it hold."""
    widths = [config.decoder_hidden_size] + [config.decoder_head_size] * (max(num_upsamples, 1) - 1)
    if config.semantic_head_norm == "group_norm":
        return nn.Sequential(
            *(HfPvtSemanticFpnGroupNormConv(width, config.decoder_head_size, num_upsamples > 0) for width in widths)
        )
    modules: list[nn.Module] = []
    for width in widths:
        modules.append(HfPvtSemanticFpnConv(width, config.decoder_head_size))
        if num_upsamples > 0:
            modules.append(nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False))
    return nn.Sequential(*modules)


class HfPvtSemanticFpnHead(nn.Module):
    """Semantic FPN head (MMSegmentation's `FPNHead`): each FPN level is brought to stride 4 by conv (+2x upsample)
    steps, the levels are summed, and after Dropout2d a 1x1 classifier predicts `num_labels` logits at a quarter of
    the input resolution."""

    def __init__(self, config: HfPvtConfig):
        super().__init__()
        strides = [math.prod(config.strides[: index + 1]) for index in range(config.num_stages)]
        self.scale_heads = nn.ModuleList(
            _scale_head(config, round(math.log2(stride / strides[0]))) for stride in strides
        )
        self.dropout = nn.Dropout2d(config.classifier_dropout_prob)
        self.classifier = nn.Conv2d(config.decoder_head_size, config.num_labels, kernel_size=1)

    def forward(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        merged = None
        for scale_head, hidden_states in zip(self.scale_heads, pyramid):
            hidden_states = scale_head(hidden_states)
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

    _keys_to_ignore_on_load_unexpected = CLASSIFICATION_ONLY_KEYS

    def __init__(self, config: HfPvtConfig):
        super().__init__(config)
        if config.semantic_head_norm == "group_norm" and config.decoder_head_size % 32:
            raise ValueError(
                f"decoder_head_size {config.decoder_head_size} must be a multiple of 32: with semantic_head_norm="
                "'group_norm' the Semantic FPN head normalises with GroupNorm(32). Use e.g. 128 (the paper) or 32 for "
                "small experiments, or semantic_head_norm='batch_norm'."
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
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> HfPvtSemanticSegmenterOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            Class ids per pixel, at any resolution (the logits are upsampled to it for the cross-entropy);
            `config.semantic_loss_ignore_index` (255) marks pixels left out of the loss.
        pixel_mask (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
            1 for real pixels, 0 for padding (bottom/right), as the image processor returns it with `do_pad=True`.
            Padding beyond the batch's largest image is left out; `logits_sizes` says where each image's logits are.

        Returns `logits` of shape `(batch_size, num_labels, height/4, width/4)`; use the image processor's
        `post_process_semantic_segmentation` for maps at the original image size.
        """
        if labels is not None:
            labels = self._check_labels(labels, pixel_values)
        sizes = None
        if pixel_mask is not None:
            sizes = image_sizes(pixel_values, pixel_mask)
            if len(sizes):
                height, width = (int(side) for side in sizes.amax(dim=0))
                if labels is not None and labels.shape[-2:] == pixel_values.shape[-2:]:
                    labels = labels[..., :height, :width]
                pixel_values = pixel_values[..., :height, :width]
        hidden_states = attentions = None
        if sizes is not None and not self.training and len(sizes.unique(dim=0)) > 1:
            logits, total, count = self._per_size(pixel_values, sizes, labels, **kwargs)
        else:
            outputs = self.pvt(pixel_values, **kwargs)
            logits = self.decode_head(self.neck(outputs.feature_maps))
            hidden_states, attentions = outputs.hidden_states, outputs.attentions
            total, count = self._loss_terms(logits, labels) if labels is not None else (None, None)

        # The mean over labelled pixels; a batch whose pixels are all ignored contributes 0, not 0/0 = NaN.
        loss = total / count.clamp(min=1) if labels is not None else None
        logits_sizes = None
        if sizes is not None:
            rows = [self.pvt.stage_sizes(int(side))[0] for side in sizes[:, 0]]
            columns = [self.pvt.stage_sizes(int(side))[0] for side in sizes[:, 1]]
            logits_sizes = torch.tensor(list(zip(rows, columns)), dtype=torch.long, device=logits.device)
            logits_sizes = logits_sizes.reshape(-1, 2)
        return HfPvtSemanticSegmenterOutput(
            loss=loss, logits=logits, hidden_states=hidden_states, attentions=attentions, logits_sizes=logits_sizes
        )

    def _loss_terms(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The summed cross-entropy over labelled pixels, and their count."""
        upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        ignore_index = self.config.semantic_loss_ignore_index
        total = F.cross_entropy(upsampled, labels, ignore_index=ignore_index, reduction="sum")
        return total, (labels != ignore_index).sum()

    def _per_size(
        self, pixel_values: torch.Tensor, sizes: torch.Tensor, labels: torch.Tensor | None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Evaluation of a batch whose images have different sizes: the images of each size run together at that
        size, as each would alone (padding reaches every token through attention), their logits placed top-left in
        zeros of the batch's size; with labels at the input's size, each image's loss over its own pixels."""
        for flag in ("output_hidden_states", "output_attentions"):
            if kwargs.get(flag, getattr(self.config, flag)):
                raise ValueError(
                    f"{flag}=True with images of different sizes {sorted(set(map(tuple, sizes.tolist())))} in "
                    "evaluation mode: each size runs on its own, so their hidden states and attentions do not "
                    "stack. Pass images of one size (or one at a time), or leave the flag off."
                )
        batch_size, _, height, width = pixel_values.shape
        map_size = (self.pvt.stage_sizes(height)[0], self.pvt.stage_sizes(width)[0])
        dtype = self.decode_head.classifier.weight.dtype
        logits = pixel_values.new_zeros((batch_size, self.config.num_labels, *map_size), dtype=dtype)
        per_image_labels = labels is not None and tuple(labels.shape[-2:]) == (height, width)
        total = count = None
        for size in sizes.unique(dim=0).tolist():
            index = torch.nonzero((sizes == sizes.new_tensor(size)).all(dim=1)).squeeze(1).to(pixel_values.device)
            outputs = self.pvt(pixel_values[index, :, : size[0], : size[1]], **kwargs)
            group = self.decode_head(self.neck(outputs.feature_maps))
            logits[index, :, : group.shape[-2], : group.shape[-1]] = group.to(dtype)
            if per_image_labels:
                group_total, group_count = self._loss_terms(group, labels[index, : size[0], : size[1]])
                total = group_total if total is None else total + group_total
                count = group_count if count is None else count + group_count
        if labels is not None and not per_image_labels:
            total, count = self._loss_terms(logits, labels)
        return logits, total, count


# Classes resized at a time by `upsampled_class_map`: measured best of 4-32 for ADE20K's 150 classes at 512x683.
CLASSES_PER_CHUNK = 16


def resized_logits(logits: torch.Tensor, sizes: list[list[int]]) -> torch.Tensor:
    """`logits` (num_labels, h, w) as float32, resized bilinearly (align_corners=False) to each of `sizes` in turn."""
    scores = logits[None].float()
    for size in sizes:
        scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
    return scores[0]


def upsampled_class_map(logits: torch.Tensor, sizes: list[list[int]]) -> torch.Tensor:
    """The class of each pixel after resizing `logits` (num_labels, h, w) bilinearly (align_corners=False) to each
    of `sizes` in turn: `F.interpolate` on all classes, then `argmax(0)`.

    On CPU (fast paths on) the classes go through in chunks, keeping a running best: the full-resolution scores
    (num_labels x H x W floats, 210 MB for ADE20K's 150 classes at 512x683) are never held at once, which made this
    1.8x faster. Each class is resized on its own either way, so the scores are the same numbers; ties keep the lowest
    class and a NaN wins, as `argmax` does.
    """
    chunk_size = CLASSES_PER_CHUNK if fast_paths_enabled(logits) else len(logits)
    best_score = best_class = None
    for start in range(0, len(logits), chunk_size):
        score, index = resized_logits(logits[start : start + chunk_size], sizes).max(0)
        if best_score is None:
            best_score, best_class = score, index
            continue
        better = (score > best_score) | (score.isnan() & ~best_score.isnan())
        best_score = torch.where(better, score, best_score)
        best_class = torch.where(better, index + start, best_class)
    return best_class


__all__ = [
    "HfPvtForSemanticSegmentation",
    "HfPvtSemanticSegmenterOutput",
    "HfPvtSemanticFpnConv",
    "HfPvtSemanticFpnGroupNormConv",
    "HfPvtSemanticFpnHead",
]
