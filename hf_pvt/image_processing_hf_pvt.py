"""Image processor for the Pyramid Vision Transformer family (PVT v1, PVTv2).

Self-contained on purpose: `save_pretrained` copies this file alone into a Hub folder for
`trust_remote_code` loading, so it imports only the standard library, transformers, PIL and numpy
(torch lazily, for post-processing). It runs on the PIL/numpy backend and needs no torchvision.
"""

import base64
import binascii
import os
import urllib.request
from io import BytesIO
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image
import PIL.ImageOps
from huggingface_hub.errors import StrictDataclassError
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    ImageInput,
    PILImageResampling,
    SizeDict,
    is_pil_image,
    is_torch_tensor,
    is_valid_image,
)
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import TensorType

if TYPE_CHECKING:
    import torch

# The value segmentation losses ignore (HF `semantic_loss_ignore_index`, mmseg's ignore_index).
IGNORE_INDEX = 255

# PIL modes whose pixels are not 8 bits: np.asarray keeps their values, convert("RGB") would saturate them.
_PIL_16_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class HfPvtImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    do_reduce_labels (`bool`, *optional*, defaults to `self.do_reduce_labels`):
        ADE20K convention: label 0 ("other") becomes 255 (ignored) and every other id k becomes k - 1. Maps
        with ids above 255 are rejected, since id 256 would become the ignore index.
    do_horizontal_flip (`bool`, *optional*, defaults to `self.do_horizontal_flip`):
        Mirror every image of the call left-right after resizing (with its segmentation map or boxes). A
        training augmentation: draw the choice per image in the data pipeline and call once per image.
    pad_size_divisor (`int`, *optional*, defaults to `self.pad_size_divisor`):
        With `do_pad`, the padded height and width are rounded up to a multiple of it (mmdet's `size_divisor`).
    """

    do_reduce_labels: bool
    do_horizontal_flip: bool
    pad_size_divisor: int


class HfPvtImageProcessor(PilBackend):
    r"""
    Image processor for PVT / PVTv2.

    The defaults reproduce the authors' evaluation transform exactly (torchvision on PIL images):
    `Resize(256, bicubic)` on the shorter side, `CenterCrop(224)`, scale to [0, 1], ImageNet
    mean/std. For dense prediction use [`~HfPvtImageProcessor.for_dense_prediction`] (or set
    `do_center_crop=False` and `size={"height": h, "width": w}`), which keeps the whole image.

    For object detection use [`~HfPvtImageProcessor.for_object_detection`]: the RetinaNet transform of
    the papers (mmdet): keep-ratio resize into 1333x800, bilinear, no crop, padding to a multiple of 32.

    `size` is `{"shortest_edge": n}` (aspect-preserving, long side `int(n * long / short)` as in
    `torchvision.transforms.Resize(n)`), `{"shortest_edge": s, "longest_edge": l}` (aspect-preserving,
    scale `min(l / long, s / short)`, sides `int(side * scale + 0.5)` as in mmcv's keep-ratio `imrescale`;
    Transformers' DETR rounds differently by up to a pixel) or `{"height": h, "width": w}`, with positive
    integers. An int `size` means `shortest_edge`, as in torchvision.

    Inputs: PIL images, numpy arrays and torch tensors, channels first or last, with 1 (grayscale),
    3 (RGB) or 4 (RGBA, composited on white) channels, or 2-D grayscale; a single image, a list, or
    a 4-D batch; or paths/URLs, opened in their stored mode. Integer pixels must lie in [0, 255] and
    are scaled by `rescale_factor`; float pixels must be finite and already lie in [0, 1] (torchvision
    `ToTensor` convention), so they skip `do_rescale` and are resized in float precision rather than
    quantized to 8 bits. 16-bit PIL images (modes `I;16*`) become floats `pixel / 65535`; 32-bit float
    PIL images (mode `F`) are float pixels and must lie in [0, 1]; 32-bit integer PIL images (mode `I`)
    have no defined range and are rejected with the conversion to use.

    Segmentation maps (`segmentation_maps=`) hold class ids (arrays, tensors, PIL images in mode `L`,
    `P`, `I;16` or `I`, or paths to such files); they go through the same resize and crop as their
    image with nearest-neighbour resampling, are never rescaled or normalized, and come back as
    `labels`. Pixels that a crop or `do_pad` has to pad are set to 255 (ignored).

    With `do_pad`, images are padded at the bottom and right with zeros (after normalization, as mmdet
    does) to the batch's largest height and width rounded up to `pad_size_divisor` (or to `pad_size`
    when given), and `pixel_mask` (int64, 1 = real pixel) comes back with `pixel_values`.

    Detection annotations (`annotations=`, COCO detection format, one dict per image:
    `{"image_id": int, "annotations": [{"bbox": [x, y, w, h], "category_id": int, "iscrowd": 0/1}, ...]}`)
    come back as `labels`, one dict per image as Transformers' DETR processor gives them: `class_labels`
    (n,) int64, `boxes` (n, 4) float32 normalized (center_x, center_y, width, height) relative to that
    image's `pixel_values` (after padding), `image_id` (1,), `orig_size` and `size` (2,) = (height, width)
    of the input image and of its `pixel_values`. As in DETR, crowd boxes (`iscrowd=1`) are left out, boxes
    are clipped to the image and boxes left without area are dropped; negative widths/heights and other
    malformed entries raise a ValueError. `category_id` is used as the class label as given: map sparse
    ids (COCO's 1..90) to the model's contiguous 0..num_labels-1 before calling.
    """

    valid_kwargs = HfPvtImageProcessorKwargs

    do_resize = True
    size = {"shortest_edge": 256}
    default_to_square = False  # an int size means the shorter side, like torchvision.Resize
    resample = PILImageResampling.BICUBIC
    do_center_crop = True
    crop_size = {"height": 224, "width": 224}
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    do_convert_rgb = True
    do_reduce_labels = False
    do_horizontal_flip = False
    do_pad = False
    pad_size_divisor = 32

    def __init__(self, **kwargs: Unpack[HfPvtImageProcessorKwargs]) -> None:
        super().__init__(**kwargs)
        _check_size(self.size)
        if self.crop_size is not None:
            _check_height_width(self.crop_size, "crop_size")
        _check_padding(self.pad_size_divisor, self.pad_size)

    @classmethod
    def for_dense_prediction(cls, height: int = 512, width: int = 512, **kwargs: Any) -> "HfPvtImageProcessor":
        """Whole-image preprocessing for segmentation/detection: resize to (height, width), no crop.

        Decoder heads over the stride-32 map want both sides to be multiples of 32.
        """
        return cls(size={"height": height, "width": width}, do_center_crop=False, **kwargs)

    @classmethod
    def for_object_detection(cls, **kwargs: Any) -> "HfPvtImageProcessor":
        """The papers' RetinaNet transform (mmdet v2): keep-ratio resize so that the image fits 1333x800
        (`{"shortest_edge": 800, "longest_edge": 1333}`, mmcv rounding), bilinear, no crop, ImageNet
        normalization, zero padding to a multiple of 32 with `pixel_mask`. Keyword arguments override.
        """
        defaults = {
            "size": {"shortest_edge": 800, "longest_edge": 1333},
            "resample": PILImageResampling.BILINEAR,
            "do_center_crop": False,
            "do_pad": True,
            "pad_size_divisor": 32,
        }
        return cls(**{**defaults, **kwargs})

    def __call__(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        annotations: dict | list[dict] | None = None,
        **kwargs: Unpack[HfPvtImageProcessorKwargs],
    ) -> BatchFeature:
        """Preprocess images (and optionally their segmentation maps or detection annotations); see the class
        docstring."""
        return self.preprocess(images, segmentation_maps, annotations, **kwargs)

    def preprocess(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        annotations: dict | list[dict] | None = None,
        **kwargs: Unpack[HfPvtImageProcessorKwargs],
    ) -> BatchFeature:
        """Returns `pixel_values` (B, 3, H, W); `pixel_mask` (B, H, W) with `do_pad`; and `labels`: int64 maps
        (B, H, W) with `segmentation_maps`, or one dict of box targets per image with `annotations`."""
        try:
            return super().preprocess(images, segmentation_maps, annotations, **kwargs)
        except StrictDataclassError as error:
            # Transformers' type check of the keyword arguments; its message names the argument.
            raise TypeError(str(error)) from None

    def _validate_preprocess_kwargs(
        self,
        size: SizeDict | None = None,
        crop_size: SizeDict | None = None,
        do_center_crop: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super()._validate_preprocess_kwargs(size=size, crop_size=crop_size, do_center_crop=do_center_crop, **kwargs)
        if kwargs.get("do_resize"):
            _check_size(size)
        if do_center_crop:
            _check_height_width(crop_size, "crop_size")
        if kwargs.get("do_pad"):
            _check_padding(kwargs.get("pad_size_divisor"), kwargs.get("pad_size"))
        if kwargs.get("do_normalize"):
            # A zero or non-finite std would turn every pixel into inf/NaN without a word.
            try:
                std = np.atleast_1d(np.asarray(kwargs.get("image_std"), dtype=np.float64))
            except (TypeError, ValueError):
                std = np.array([np.nan])
            if not np.all(np.isfinite(std) & (std > 0)):
                raise ValueError(f"image_std must hold positive finite values, got {kwargs.get('image_std')}.")

    # ----------------------------------------------------------------------------- inputs

    def _prepare_images_structure(self, images: ImageInput, expected_ndims: int = 3) -> list:
        # Replaces make_flat_list_of_images, which rejects 2-D grayscale arrays and empty lists
        # with an unhelpful "could not make a flat list" message.
        if isinstance(images, (list, tuple)):
            flat = [im for item in images for im in (item if isinstance(item, (list, tuple)) else [item])]
            if not flat:
                raise ValueError("Got an empty list of images: pass at least one image.")
        else:
            flat = [images]
        result = []
        for image in flat:
            if isinstance(image, str):
                image = _open_image_source(image)  # a local path, URL or base64 string
            if not is_valid_image(image):
                raise TypeError(
                    f"Unsupported image type {type(image).__name__}: pass a PIL image, a numpy array, a torch "
                    "tensor or a path/URL string (or a list of these)."
                )
            is_batch = not is_pil_image(image) and image.ndim == expected_ndims + 1
            if is_batch and expected_ndims == 2 and image.shape[-1] in (1, 3, 4):
                is_batch = False  # an (H, W, 1) map or a colour-coded mask, not a batch of thin maps
            if is_batch:
                result.extend(image)
            else:
                result.append(image)
        return result

    def process_image(
        self,
        image: ImageInput,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """One raw image -> channels-first numpy array (uint8, or float32 in [0, 1])."""
        where = ""
        if is_pil_image(image):
            where = f" (a PIL image in mode {image.mode!r})"
            image = _high_bit_depth_pil_to_numpy(image)
        if is_torch_tensor(image):
            image = _tensor_to_numpy(image)
        if isinstance(image, np.ndarray):
            image = _check_pixel_array(image, input_data_format, where)
            if image.ndim == 2:  # grayscale; the base RGB conversion only understands 3-D arrays
                image, input_data_format = image[None], ChannelDimension.FIRST
        image = super().process_image(image, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format)
        if 0 in image.shape[-2:]:
            raise ValueError(
                f"Got an image of size {tuple(image.shape[-2:])} (height, width): images need at least one pixel "
                "in each dimension."
            )
        return image

    def _prepare_segmentation_map(self, seg_map: ImageInput) -> np.ndarray:
        """One class-id map -> (1, H, W) array, uint8 when it fits (PIL's fast 8-bit path)."""
        if is_torch_tensor(seg_map):
            seg_map = _tensor_to_numpy(seg_map)
        if is_pil_image(seg_map) and seg_map.mode in _PIL_16_BIT_MODES:
            seg_map = np.asarray(seg_map).astype(np.int64)  # big-endian I;16B arrives as ">u2"
        seg_map = np.asarray(seg_map)
        if seg_map.ndim == 3 and 1 in (seg_map.shape[0], seg_map.shape[-1]):
            seg_map = seg_map.reshape(seg_map.shape[1:] if seg_map.shape[0] == 1 else seg_map.shape[:-1])
        if seg_map.ndim != 2:
            raise ValueError(
                f"A segmentation map must be a 2-D (height, width) array of class ids, got shape {seg_map.shape}. "
                "Map colour-coded masks to class ids first."
            )
        if seg_map.dtype.kind not in "uif" or (
            seg_map.dtype.kind == "f" and not (np.isfinite(seg_map).all() and np.all(seg_map == np.round(seg_map)))
        ):
            raise ValueError(f"A segmentation map must hold integer class ids, got dtype {seg_map.dtype}.")
        seg_map = seg_map.astype(np.int64)
        if seg_map.size and seg_map.min() >= 0 and seg_map.max() <= 255:
            seg_map = seg_map.astype(np.uint8)
        return seg_map[None]

    def _preprocess_image_like_inputs(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None,
        annotations: dict | list[dict] | None,
        do_convert_rgb: bool,
        input_data_format: str | ChannelDimension | None,
        return_tensors: str | TensorType | None,
        **kwargs: Any,
    ) -> BatchFeature:
        images = self._prepare_image_like_inputs(
            images, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format
        )
        if segmentation_maps is not None and annotations is not None:
            raise ValueError(
                "Got both segmentation_maps and annotations: both come back as labels, so pass one of them."
            )
        targets = None
        if annotations is not None:
            if kwargs["do_center_crop"]:
                raise ValueError(
                    "Detection annotations need the whole image: set do_center_crop=False (for_object_detection() "
                    "does), since a crop would cut boxes."
                )
            targets = _prepare_detection_targets(annotations, [image.shape[-2:] for image in images])
        data = {"pixel_values": self._preprocess(images, **kwargs)}
        # Sizes after resize/flip/crop, before padding: boxes follow the resize, the mask marks these pixels.
        sizes = [image.shape[-2:] for image in data["pixel_values"]]

        if segmentation_maps is not None:
            maps = [self._prepare_segmentation_map(m) for m in self._prepare_images_structure(segmentation_maps, 2)]
            if len(maps) != len(images):
                raise ValueError(
                    f"Got {len(images)} images but {len(maps)} segmentation maps: pass one (H, W) map per image "
                    "(a 3-D array is read as a batch of maps)."
                )
            for image, seg_map in zip(images, maps):
                if image.shape[-2:] != seg_map.shape[-2:]:
                    raise ValueError(
                        f"A segmentation map of size {seg_map.shape[-2:]} does not match its image of size "
                        f"{image.shape[-2:]} (height, width): they must share one geometry."
                    )
            if kwargs["do_reduce_labels"]:
                maps = [self.reduce_label(m) for m in maps]
            map_kwargs = {**kwargs, "do_rescale": False, "do_normalize": False, "resample": PILImageResampling.NEAREST}
            data["labels"] = self._preprocess(maps, fill=IGNORE_INDEX, **map_kwargs)

        if kwargs["do_pad"]:
            padded = _padded_size(sizes, kwargs["pad_size_divisor"], kwargs["pad_size"])
            data["pixel_values"], data["pixel_mask"] = self.pad(
                data["pixel_values"], pad_size=SizeDict(height=padded[0], width=padded[1]), return_mask=True
            )
            if "labels" in data:
                data["labels"] = self.pad(
                    data["labels"], pad_size=SizeDict(height=padded[0], width=padded[1]), fill_value=IGNORE_INDEX
                )
        if "labels" in data:
            data["labels"] = [m[0].astype(np.int64) for m in data["labels"]]

        if return_tensors is not None:
            for key, arrays in data.items():
                if len({a.shape for a in arrays}) > 1:
                    raise ValueError(
                        f"The {key} of this batch have different sizes {sorted({a.shape for a in arrays})}, so they "
                        'cannot be stacked: use do_pad=True, a fixed size ({"height": h, "width": w}) or '
                        "do_center_crop=True, or process the images one at a time."
                    )
        features = BatchFeature(data=data, tensor_type=return_tensors)
        if targets is not None:
            features["labels"] = [
                BatchFeature(
                    _detection_labels(target, size, image.shape[-2:], kwargs["do_horizontal_flip"]),
                    tensor_type=return_tensors,
                )
                for target, size, image in zip(targets, sizes, data["pixel_values"])
            ]
        return features

    # ----------------------------------------------------------------------------- transforms

    def _preprocess(
        self,
        images: list[np.ndarray],
        do_resize: bool,
        size: SizeDict,
        resample: PILImageResampling | int,
        do_center_crop: bool,
        crop_size: SizeDict,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | tuple[float, ...],
        image_std: float | tuple[float, ...],
        do_horizontal_flip: bool = False,
        fill: int = 0,
        **kwargs: Any,
    ) -> list[np.ndarray]:
        processed = []
        for image in images:
            if do_resize:
                image = self.resize(image, size, resample)
            if do_horizontal_flip:  # after the resize, as mmdet's RandomFlip
                image = np.ascontiguousarray(image[..., ::-1])
            if do_center_crop:
                image = self.center_crop(image, crop_size, fill=fill)
            if do_rescale and image.dtype.kind != "f":  # float pixels are already in [0, 1]
                image = self.rescale(image, rescale_factor)
            if do_normalize:
                image = self.normalize(image.astype(np.float32), image_mean, image_std)
            processed.append(image)
        return processed

    def resize(
        self,
        image: np.ndarray,
        size: SizeDict,
        resample: PILImageResampling | int | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Resize a (C, H, W) array with PIL, as torchvision's `Resize` does on PIL images.

        When enlarging (every COCO image under the detection preset), PIL's bilinear filter is mmcv/OpenCV's
        half-pixel bilinear interpolation (8-bit results may round one level apart); when shrinking, PIL
        antialiases where OpenCV samples.
        """
        _check_size(size)
        resample = self.resample if resample is None else resample
        height, width = image.shape[-2:]
        new_height, new_width = resized_size(height, width, size)
        if (new_height, new_width) == (height, width):
            return image
        if image.dtype == np.uint8 and image.shape[0] in (1, 3):
            # 8-bit PIL images: the exact arithmetic (and rounding) of the original pipeline.
            pil = PIL.Image.fromarray(image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1))
            resized = np.asarray(pil.resize((new_width, new_height), resample=resample))
            return resized[None] if resized.ndim == 2 else np.moveaxis(resized, -1, 0)
        # Anything else: one 32-bit float ("F") plane per channel, so float pixels are not quantized to
        # 8 bits and integer class ids up to 2**24 survive nearest resizing exactly.
        planes = [
            np.asarray(PIL.Image.fromarray(c.astype(np.float32)).resize((new_width, new_height), resample))
            for c in image
        ]
        resized = np.stack(planes)
        if image.dtype.kind == "f":
            # Float pixels live in [0, 1]; clip the bicubic overshoot as the 8-bit path does.
            return np.clip(resized, 0.0, 1.0)
        info = np.iinfo(image.dtype)
        return np.clip(np.rint(resized), info.min, info.max).astype(image.dtype)

    def center_crop(self, image: np.ndarray, size: SizeDict, fill: int = 0, **kwargs: Any) -> np.ndarray:
        """torchvision's `CenterCrop`: top = int(round((H - h) / 2)), zero-padding an image smaller than the crop."""
        _check_height_width(size, "crop_size")
        crop_height, crop_width = size.height, size.width
        pad_height, pad_width = max(crop_height - image.shape[-2], 0), max(crop_width - image.shape[-1], 0)
        if pad_height or pad_width:
            pads = (
                (0, 0),
                (pad_height // 2, pad_height - pad_height // 2),
                (pad_width // 2, pad_width - pad_width // 2),
            )
            image = np.pad(image, pads, constant_values=fill)
        height, width = image.shape[-2:]
        top = int(round((height - crop_height) / 2.0))
        left = int(round((width - crop_width) / 2.0))
        return image[:, top : top + crop_height, left : left + crop_width]

    @staticmethod
    def reduce_label(seg_map: np.ndarray) -> np.ndarray:
        """ADE20K: 0 ("other") -> 255 (ignored), k -> k - 1; 255 stays 255. Returns a new array.

        Ids above 255 raise a ValueError: 256 would become 255 and silently join the ignored pixels.
        """
        seg_map = np.asarray(seg_map)
        if seg_map.size and seg_map.max() > IGNORE_INDEX:
            raise ValueError(
                f"do_reduce_labels maps class id k to k - 1 and keeps {IGNORE_INDEX} as the ignore index, so it only "
                f"supports ids up to {IGNORE_INDEX}; this map holds ids up to {seg_map.max()} (id 256 would become "
                f"{IGNORE_INDEX} and be ignored). Shift the ids yourself and set do_reduce_labels=False."
            )
        reduced = np.where((seg_map == 0) | (seg_map == IGNORE_INDEX), IGNORE_INDEX, seg_map.astype(np.int64) - 1)
        return reduced.astype(seg_map.dtype)

    # ----------------------------------------------------------------------------- outputs

    def post_process_semantic_segmentation(
        self,
        outputs: Any,
        target_sizes: "list[tuple[int, int]] | torch.Tensor | None" = None,
        return_segmentation_scores: bool = False,
    ) -> list:
        """Logits (B, num_labels, h, w) -> one (H, W) LongTensor of class ids per image.

        The same call as Transformers' Segformer/BEiT/DPT processors. `outputs` is the model output (a
        `ModelOutput`, a dict with `"logits"`, or the `return_dict=False` tuple, with or without a leading
        loss). Each map is bilinearly upsampled (align_corners=False) to its `target_sizes` entry (a list of
        (height, width) pairs or a (B, 2) tensor, e.g. the original sizes) before the argmax; without
        `target_sizes` the logits' own size is kept. Upsampling to the original size is only meaningful when
        preprocessing kept the whole image (`do_center_crop=False`).

        With `return_segmentation_scores=True` each item is a `SemanticSegmentationPostProcessorOutput` with
        `segmentation` (H, W) and `segmentation_scores` (num_labels, H, W): the (upsampled) logits.
        """
        import torch.nn.functional as F

        logits = _semantic_logits(outputs)
        sizes = _check_target_sizes(target_sizes, len(logits), "logits")
        results = []
        for index, logit in enumerate(logits):
            scores = logit
            if sizes is not None:
                upsampled = F.interpolate(logit[None].float(), size=sizes[index], mode="bilinear", align_corners=False)
                scores = upsampled[0]
            segmentation = scores.argmax(dim=0)
            if return_segmentation_scores:
                results.append(
                    _segmentation_output(
                        data={"segmentation": segmentation, "segmentation_scores": scores.to(logit.dtype)}
                    )
                )
            else:
                results.append(segmentation)
        return results

    def post_process_object_detection(
        self,
        outputs: Any,
        threshold: float = 0.05,
        target_sizes: "list[tuple[int, int]] | torch.Tensor | None" = None,
        nms_pre: int = 1000,
        iou_threshold: float = 0.5,
        max_per_image: int = 100,
    ) -> list[dict[str, "torch.Tensor"]]:
        """RetinaNet outputs -> per image {"scores" (k,), "labels" (k,) int64, "boxes" (k, 4) (x1, y1, x2, y2)}.

        mmdet v2.13's test procedure (`detection_hf_pvt.retinanet_postprocess`): per level the `nms_pre` best
        anchors (<= 0: all), decoded and clipped to the image's valid region (`outputs.image_sizes`); then
        (anchor, class) pairs scoring above `threshold`, class-wise NMS at `iou_threshold`, at most
        `max_per_image` detections (<= 0: all), best first. Boxes are in pixels of the resized image, or, with
        `target_sizes` (a list of (height, width) or a (B, 2) tensor, usually the original sizes), scaled by
        `target / image_sizes` and clipped to the target. Boxes and scores are float32.

        `outputs`: the model output (`HfPvtObjectDetectionOutput` or a dict with `logits`, `pred_box_deltas`,
        `anchors`, `image_sizes`) or its `return_dict=False` tuple, with or without the leading losses.
        """
        import torch

        from .detection_hf_pvt import retinanet_postprocess

        for name, value in (("nms_pre", nms_pre), ("max_per_image", max_per_image)):
            if not _is_int(value):
                raise TypeError(f"{name} must be an integer (<= 0 keeps everything), got {value!r}.")
        for name, value in (("threshold", threshold), ("iou_threshold", iou_threshold)):
            if not isinstance(value, (int, float, np.number)) or isinstance(value, bool) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")
        logits, box_deltas, anchors, image_sizes = _detection_fields(outputs)
        batch_size = len(logits[0])
        sizes = _check_target_sizes(target_sizes, batch_size, "detections")
        results = []
        for index in range(batch_size):
            valid_height, valid_width = (int(v) for v in image_sizes[index])
            detections = retinanet_postprocess(
                [level[index] for level in logits],
                [level[index] for level in box_deltas],
                list(anchors),
                (valid_height, valid_width),
                score_threshold=float(threshold),
                nms_pre=nms_pre,
                iou_threshold=float(iou_threshold),
                max_per_image=max_per_image,
            )
            boxes = detections["boxes"]
            if sizes is not None:
                target_height, target_width = sizes[index]
                scale = torch.tensor(
                    [target_width / valid_width, target_height / valid_height] * 2, dtype=boxes.dtype
                ).to(boxes.device)
                limit = torch.tensor([target_width, target_height] * 2, dtype=boxes.dtype).to(boxes.device)
                boxes = torch.minimum((boxes * scale).clamp(min=0), limit)
            results.append({"scores": detections["scores"], "labels": detections["labels"], "boxes": boxes})
        return results


# --------------------------------------------------------------------------------- helpers


def resized_size(height: int, width: int, size: SizeDict | dict) -> tuple[int, int]:
    """The (height, width) that `resize` gives an image of (height, width) for `size`."""
    size = size if isinstance(size, SizeDict) else SizeDict(**size)
    if size.shortest_edge and size.longest_edge:
        # mmcv.imrescale(keep_ratio=True): fit inside (longest, shortest), sides rounded half up. At least one
        # pixel: an extreme aspect ratio could otherwise round a side to zero.
        scale = min(size.longest_edge / max(height, width), size.shortest_edge / min(height, width))
        return max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1)
    if size.shortest_edge:
        # torchvision.transforms.Resize(n): the long side is truncated, not rounded.
        short, long = sorted((height, width))
        new_short, new_long = size.shortest_edge, int(size.shortest_edge * long / short)
        return (new_short, new_long) if height <= width else (new_long, new_short)
    return size.height, size.width


def _segmentation_output(data: dict) -> BatchFeature:
    # Transformers >= 5.x returns this BatchFeature subclass; older 5.x releases lack it, and a plain
    # BatchFeature offers the same item and attribute access.
    try:
        from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
    except ImportError:
        return BatchFeature(data=data)
    return SemanticSegmentationPostProcessorOutput(data=data)


def _semantic_logits(outputs: Any) -> "torch.Tensor":
    """The segmentation logits of a model output, a dict, or a `return_dict=False` tuple."""
    if isinstance(outputs, dict):  # ModelOutput is a dict too
        logits = outputs.get("logits")
    elif isinstance(outputs, (tuple, list)):
        items = list(outputs)
        if items and is_torch_tensor(items[0]) and items[0].ndim == 0:
            items = items[1:]  # (loss, logits, ...) when the model was given labels
        logits = items[0] if items else None
    elif is_torch_tensor(outputs):
        logits = outputs
    else:
        logits = getattr(outputs, "logits", None)
    if not is_torch_tensor(logits) or logits.ndim != 4:
        found = f"shape {tuple(logits.shape)}" if is_torch_tensor(logits) else type(logits).__name__
        raise TypeError(
            f"outputs must be a segmentation model's output with logits of shape (batch, num_labels, height, "
            f"width) (a ModelOutput, a dict with 'logits', or the return_dict=False tuple); got logits {found}."
        )
    return logits


_DETECTION_FIELDS = ("logits", "pred_box_deltas", "anchors", "image_sizes")


def _detection_fields(outputs: Any) -> tuple:
    """(logits, pred_box_deltas, anchors, image_sizes) of a detection output, a dict or a return_dict=False tuple."""
    if isinstance(outputs, dict):  # ModelOutput is a dict too
        fields = [outputs.get(name) for name in _DETECTION_FIELDS]
    elif isinstance(outputs, (tuple, list)):
        items = list(outputs)
        if items and is_torch_tensor(items[0]) and items[0].ndim == 0:
            items = items[1:]  # the loss, when the model was given labels ...
        if items and isinstance(items[0], dict):
            items = items[1:]  # ... and the loss_dict after it
        fields = (items + [None] * 4)[:4]
    else:
        fields = [getattr(outputs, name, None) for name in _DETECTION_FIELDS]
    logits, box_deltas, anchors, image_sizes = fields
    levels_ok = all(
        isinstance(levels, (tuple, list)) and levels and all(is_torch_tensor(t) for t in levels)
        for levels in (logits, box_deltas, anchors)
    )
    if not levels_ok or not is_torch_tensor(image_sizes):
        missing = [name for name, value in zip(_DETECTION_FIELDS, fields) if value is None]
        raise TypeError(
            "outputs must be HfPvtForObjectDetection's output: per-level tuples logits, pred_box_deltas and anchors, "
            "and image_sizes (batch, 2) (a ModelOutput, a dict, or the return_dict=False tuple)"
            + (f"; missing {missing}." if missing else "; got other types.")
        )
    if not len(logits) == len(box_deltas) == len(anchors):
        raise ValueError(
            f"outputs hold {len(logits)} levels of logits, {len(box_deltas)} of pred_box_deltas and {len(anchors)} "
            "of anchors: they must match."
        )
    if image_sizes.shape != (len(logits[0]), 2):
        raise ValueError(
            f"outputs.image_sizes must be (batch, 2) = ({len(logits[0])}, 2), got {tuple(image_sizes.shape)}."
        )
    return logits, box_deltas, anchors, image_sizes


def _check_target_sizes(target_sizes: Any, batch_size: int, what: str) -> list[tuple[int, int]] | None:
    """`target_sizes` as a list of (height, width) int pairs, one per image; None stays None."""
    if target_sizes is None:
        return None
    if hasattr(target_sizes, "tolist"):  # a (B, 2) tensor or array
        target_sizes = target_sizes.tolist()
    if len(target_sizes) != batch_size:
        raise ValueError(
            f"Got {len(target_sizes)} target sizes for a batch of {batch_size} {what}: pass one (height, width) "
            "per image."
        )
    sizes = []
    for size in target_sizes:
        size = size.tolist() if hasattr(size, "tolist") else size
        if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(_is_positive_whole(s) for s in size)):
            raise ValueError(
                f"Each entry of target_sizes must be a (height, width) pair of positive integers, got {size!r}."
            )
        sizes.append((int(size[0]), int(size[1])))
    return sizes


def _open_image_source(source: str) -> PIL.Image.Image:
    """A path, http(s) URL or base64 string -> PIL image in its stored mode, upright per its EXIF tag.

    Transformers' `load_image` converts to RGB, which saturates 16-bit images and turns class-id maps
    (mode P / L / I) into colours; here the mode is kept and decided on later.
    """
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source) as response:  # follows redirects, raises on HTTP errors
            image = PIL.Image.open(BytesIO(response.read()))
    elif os.path.isfile(source):
        image = PIL.Image.open(source)
    else:
        try:
            encoded = source.split(",", 1)[1] if source.startswith("data:image/") else source
            image = PIL.Image.open(BytesIO(base64.b64decode(encoded, validate=True)))
        except (binascii.Error, ValueError, IndexError, OSError):
            raise ValueError(
                f"Image source {source[:100]!r} is not an existing file, an http(s) URL or a base64-encoded image."
            ) from None
    image.load()
    return PIL.ImageOps.exif_transpose(image)


def _high_bit_depth_pil_to_numpy(image: PIL.Image.Image) -> np.ndarray | PIL.Image.Image:
    """16-bit PIL images -> float pixels in [0, 1]; mode F -> its float pixels (range-checked later)."""
    if image.mode in _PIL_16_BIT_MODES:
        return np.asarray(image).astype(np.float32) / 65535.0
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)
    if image.mode in ("I", "I;32", "I;32L", "I;32B"):
        raise ValueError(
            f"PIL mode {image.mode!r} images hold 32-bit integers with no defined pixel range, so they cannot be "
            "scaled to [0, 1] safely (converting them to RGB would saturate every value above 255). Pass "
            "`np.asarray(image) / max_value` as a float array in [0, 1], or an 8-bit image."
        )
    return image  # CMYK, YCbCr, HSV...: PIL converts these to RGB itself


def _tensor_to_numpy(tensor: "torch.Tensor") -> np.ndarray:
    # numpy has no bfloat16: floats go through float32 (exact for bf16/fp16, harmless for fp32).
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.is_floating_point() else tensor).numpy()


def _is_int(value: Any, allow_bool: bool = False) -> bool:
    return isinstance(value, (int, np.integer)) and (allow_bool or not isinstance(value, bool))


def _is_positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _is_positive_whole(value: Any) -> bool:
    # target sizes may come from a float tensor: 480.0 is a size, 480.5 is not
    if isinstance(value, (float, np.floating)):
        return value > 0 and float(value).is_integer()
    return _is_positive_int(value)


def _check_size(size: SizeDict | dict | None) -> None:
    size = dict(size) if size is not None else {}
    if set(size) not in ({"shortest_edge"}, {"shortest_edge", "longest_edge"}, {"height", "width"}):
        raise ValueError(
            f'size must be {{"shortest_edge": n}}, {{"shortest_edge": n, "longest_edge": m}} or {{"height": h, '
            f'"width": w}}, got {size}.'
        )
    if not all(_is_positive_int(v) for v in size.values()):
        raise ValueError(
            f'size must hold positive integers, got {size}: e.g. size={{"shortest_edge": 256}} or '
            'size={"height": 512, "width": 512}.'
        )
    if "longest_edge" in size and size["longest_edge"] < size["shortest_edge"]:
        raise ValueError(f"size['longest_edge'] must be at least size['shortest_edge'], got {size}.")


def _check_padding(pad_size_divisor: Any, pad_size: SizeDict | dict | None) -> None:
    if not _is_positive_int(pad_size_divisor):
        raise ValueError(
            f"pad_size_divisor must be a positive integer (1 pads to the batch's largest image), got "
            f"{pad_size_divisor!r}."
        )
    if pad_size is not None:
        _check_height_width(pad_size, "pad_size")


def _padded_size(sizes: list[tuple[int, int]], divisor: int, pad_size: SizeDict | None) -> tuple[int, int]:
    """The batch's canvas: `pad_size` as given, else the largest height and width rounded up to `divisor`."""
    height, width = max(size[0] for size in sizes), max(size[1] for size in sizes)
    if pad_size is not None:
        if height > pad_size.height or width > pad_size.width:
            raise ValueError(
                f"pad_size {dict(pad_size)} is smaller than the batch's largest processed height and width "
                f"({height}, {width}): raise pad_size, or leave it unset to pad to the batch's largest image."
            )
        return pad_size.height, pad_size.width
    return -(-height // divisor) * divisor, -(-width // divisor) * divisor


def _check_height_width(size: SizeDict | dict | None, name: str) -> None:
    size = dict(size) if size is not None else {}
    if set(size) != {"height", "width"} or not all(_is_positive_int(v) for v in size.values()):
        raise ValueError(
            f'{name} must be {{"height": h, "width": w}} with positive integers (or one positive int for a square), '
            f"got {size}."
        )


COCO_DETECTION_FORMAT = (
    '{"image_id": int, "annotations": [{"bbox": [x, y, width, height], "category_id": int, "iscrowd": 0 or 1}, ...]}'
)


def _prepare_detection_targets(annotations: Any, image_sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """COCO detection annotations -> per image {"boxes": (n, 4) absolute xyxy float64, "class_labels", ...}.

    As Transformers' DETR processor: crowd boxes are left out, boxes are clipped to the image and boxes
    without area after clipping are dropped. Malformed entries raise, naming the entry.
    """
    if isinstance(annotations, dict):
        annotations = [annotations]
    if not isinstance(annotations, (list, tuple)):
        raise TypeError(
            f"annotations must be one dict per image in COCO detection format {COCO_DETECTION_FORMAT}, got "
            f"{type(annotations).__name__}."
        )
    if len(annotations) != len(image_sizes):
        raise ValueError(
            f"Got {len(image_sizes)} images but {len(annotations)} annotations: pass one annotation dict per image "
            "(an image without objects has an empty 'annotations' list)."
        )
    targets = []
    for index, (annotation, (height, width)) in enumerate(zip(annotations, image_sizes)):
        where = f"annotations[{index}]"
        if (
            not isinstance(annotation, dict)
            or "image_id" not in annotation
            or not isinstance(annotation.get("annotations"), (list, tuple))
        ):
            found = sorted(annotation) if isinstance(annotation, dict) else type(annotation).__name__
            raise ValueError(f"{where} must be a dict in COCO detection format {COCO_DETECTION_FORMAT}, got {found}.")
        image_id = annotation["image_id"]
        if not _is_int(image_id):
            raise TypeError(f"{where}['image_id'] must be an integer, got {image_id!r}.")
        boxes, class_labels = [], []
        for number, obj in enumerate(annotation["annotations"]):
            entry = f"{where}['annotations'][{number}]"
            if not isinstance(obj, dict) or "bbox" not in obj or "category_id" not in obj:
                found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
                raise ValueError(
                    f"{entry} must be a dict with 'bbox' [x, y, width, height] and 'category_id', got {found}."
                )
            try:
                bbox = np.asarray(obj["bbox"], dtype=np.float64)
            except (TypeError, ValueError):
                bbox = None
            if bbox is None or bbox.shape != (4,) or not np.isfinite(bbox).all():
                raise ValueError(
                    f"{entry}['bbox'] must be 4 finite numbers [x, y, width, height], got {obj['bbox']!r}."
                )
            if bbox[2] < 0 or bbox[3] < 0:
                raise ValueError(
                    f"{entry}['bbox'] {obj['bbox']!r} has a negative width or height: COCO boxes are [x, y, width, "
                    "height] with (x, y) the top-left corner; convert corner boxes [x1, y1, x2, y2] first."
                )
            category_id = obj["category_id"]
            if not _is_int(category_id) or category_id < 0:
                raise ValueError(f"{entry}['category_id'] must be a non-negative integer, got {category_id!r}.")
            iscrowd = obj.get("iscrowd", 0)
            if not _is_int(iscrowd, allow_bool=True) or iscrowd not in (0, 1):
                raise ValueError(f"{entry}['iscrowd'] must be 0 or 1, got {iscrowd!r}.")
            if iscrowd:
                continue  # crowd regions are not instances to detect (DETR and mmdet leave them out)
            boxes.append([bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]])
            class_labels.append(int(category_id))
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        targets.append(
            {
                "boxes": boxes[keep],
                "class_labels": np.asarray(class_labels, dtype=np.int64).reshape(-1)[keep],
                "image_id": np.asarray([image_id], dtype=np.int64),
                "orig_size": np.asarray([height, width], dtype=np.int64),
            }
        )
    return targets


def _detection_labels(
    target: dict[str, Any], image_size: tuple[int, int], canvas_size: tuple[int, int], flipped: bool
) -> dict[str, np.ndarray]:
    """Absolute boxes of the input image -> normalized (cx, cy, w, h) on the processed, padded image."""
    (height, width), (new_height, new_width) = target["orig_size"].tolist(), image_size
    scale_x, scale_y = new_width / width, new_height / height
    boxes = target["boxes"] * np.array([scale_x, scale_y, scale_x, scale_y])
    if flipped:  # mmdet's bbox_flip: x1' = W - x2, x2' = W - x1
        boxes = np.stack([new_width - boxes[:, 2], boxes[:, 1], new_width - boxes[:, 0], boxes[:, 3]], axis=-1)
    canvas_height, canvas_width = canvas_size
    center_size = np.stack(
        [
            (boxes[:, 0] + boxes[:, 2]) / 2 / canvas_width,
            (boxes[:, 1] + boxes[:, 3]) / 2 / canvas_height,
            (boxes[:, 2] - boxes[:, 0]) / canvas_width,
            (boxes[:, 3] - boxes[:, 1]) / canvas_height,
        ],
        axis=-1,
    ).reshape(-1, 4)
    return {
        "class_labels": target["class_labels"],
        "boxes": center_size.astype(np.float32),
        "image_id": target["image_id"],
        "orig_size": target["orig_size"],
        "size": np.asarray(canvas_size, dtype=np.int64),
    }


def _check_pixel_array(
    image: np.ndarray, input_data_format: str | ChannelDimension | None, where: str = ""
) -> np.ndarray:
    """Validate a numpy image and bring it to uint8 or float32; errors say what to change.

    `where` names the input's origin in the messages, e.g. " (a PIL image in mode 'F')".
    """
    if image.ndim == 3:
        if input_data_format is not None:
            channels = image.shape[0 if ChannelDimension(input_data_format) == ChannelDimension.FIRST else -1]
            valid = channels in (1, 3, 4)
        else:
            valid = image.shape[0] in (1, 3, 4) or image.shape[-1] in (1, 3, 4)
        if not valid:
            raise ValueError(
                f"Images must have 1 (grayscale), 3 (RGB) or 4 (RGBA) channels in the first or last axis, got shape "
                f"{image.shape}. Convert the image to RGB first, or pass a list for a batch of 2-D grayscale images."
            )
    elif image.ndim != 2:
        raise ValueError(
            f"An image must be a 2-D (H, W) or 3-D (C, H, W) / (H, W, C) array, got shape {image.shape}. "
            "Pass a batch as a list or a 4-D array."
        )
    if image.dtype.kind in "ui":
        if image.size and (image.min() < 0 or image.max() > 255):
            raise ValueError(
                f"Integer pixel values must lie in [0, 255], got [{image.min()}, {image.max()}]. Convert the image "
                "to 8 bits first, or pass 16-bit pixels as floats in [0, 1] (pixels / 65535)."
            )
        return image.astype(np.uint8, copy=False)
    if image.dtype.kind == "f":
        if image.size and not np.isfinite(image).all():
            raise ValueError(
                f"Float pixel values must be finite, got NaN or infinity{where}. Replace them (e.g. with "
                "np.nan_to_num) before preprocessing."
            )
        if image.size and (image.min() < 0 or image.max() > 1):
            raise ValueError(
                f"Float pixel values must lie in [0, 1], got [{image.min():.3g}, {image.max():.3g}]{where}. Pass "
                "uint8 pixels or floats scaled to [0, 1] (divide by 255 for 8-bit values); float inputs must not be "
                "normalized already."
            )
        return image.astype(np.float32, copy=False)
    raise ValueError(f"Unsupported pixel dtype {image.dtype}: pass uint8 pixels or floats in [0, 1].")


__all__ = ["HfPvtImageProcessor"]
