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
    """

    do_reduce_labels: bool


class HfPvtImageProcessor(PilBackend):
    r"""
    Image processor for PVT / PVTv2.

    The defaults reproduce the authors' evaluation transform exactly (torchvision on PIL images):
    `Resize(256, bicubic)` on the shorter side, `CenterCrop(224)`, scale to [0, 1], ImageNet
    mean/std. For dense prediction use [`~HfPvtImageProcessor.for_dense_prediction`] (or set
    `do_center_crop=False` and `size={"height": h, "width": w}`), which keeps the whole image.

    `size` is `{"shortest_edge": n}` (aspect-preserving, long side `int(n * long / short)` as in
    `torchvision.transforms.Resize(n)`) or `{"height": h, "width": w}`, with positive integers. An
    int `size` means `shortest_edge`, as in torchvision.

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
    `labels`. Pixels that a crop has to pad are set to 255 (ignored).
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

    def __init__(self, **kwargs: Unpack[HfPvtImageProcessorKwargs]) -> None:
        super().__init__(**kwargs)
        _check_size(self.size)
        if self.crop_size is not None:
            _check_height_width(self.crop_size, "crop_size")

    @classmethod
    def for_dense_prediction(cls, height: int = 512, width: int = 512, **kwargs: Any) -> "HfPvtImageProcessor":
        """Whole-image preprocessing for segmentation/detection: resize to (height, width), no crop.

        Decoder heads over the stride-32 map want both sides to be multiples of 32.
        """
        return cls(size={"height": height, "width": width}, do_center_crop=False, **kwargs)

    def __call__(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        **kwargs: Unpack[HfPvtImageProcessorKwargs],
    ) -> BatchFeature:
        """Preprocess images (and optionally their segmentation maps); see the class docstring."""
        return self.preprocess(images, segmentation_maps, **kwargs)

    def preprocess(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        **kwargs: Unpack[HfPvtImageProcessorKwargs],
    ) -> BatchFeature:
        """Returns `pixel_values` (B, 3, H, W) and, with `segmentation_maps`, int64 `labels` (B, H, W)."""
        try:
            return super().preprocess(images, segmentation_maps, **kwargs)
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
        do_convert_rgb: bool,
        input_data_format: str | ChannelDimension | None,
        return_tensors: str | TensorType | None,
        **kwargs: Any,
    ) -> BatchFeature:
        images = self._prepare_image_like_inputs(
            images, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format
        )
        data = {"pixel_values": self._preprocess(images, **kwargs)}

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
            maps = self._preprocess(maps, fill=IGNORE_INDEX, **map_kwargs)
            data["labels"] = [m[0].astype(np.int64) for m in maps]

        if return_tensors is not None:
            for key, arrays in data.items():
                if len({a.shape for a in arrays}) > 1:
                    raise ValueError(
                        f"The {key} of this batch have different sizes {sorted({a.shape for a in arrays})}, so they "
                        'cannot be stacked: use a fixed size ({"height": h, "width": w}) or do_center_crop=True, '
                        "or process the images one at a time."
                    )
        return BatchFeature(data=data, tensor_type=return_tensors)

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
        fill: int = 0,
        **kwargs: Any,
    ) -> list[np.ndarray]:
        processed = []
        for image in images:
            if do_resize:
                image = self.resize(image, size, resample)
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
        """Resize a (C, H, W) array with PIL, as torchvision's `Resize` does on PIL images."""
        _check_size(size)
        resample = self.resample if resample is None else resample
        height, width = image.shape[-2:]
        if size.shortest_edge:
            # torchvision.transforms.Resize(n): the long side is truncated, not rounded.
            short, long = sorted((height, width))
            new_short, new_long = size.shortest_edge, int(size.shortest_edge * long / short)
            new_height, new_width = (new_short, new_long) if height <= width else (new_long, new_short)
        else:
            new_height, new_width = size.height, size.width
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


# --------------------------------------------------------------------------------- helpers


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


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


def _is_positive_whole(value: Any) -> bool:
    # target sizes may come from a float tensor: 480.0 is a size, 480.5 is not
    if isinstance(value, (float, np.floating)):
        return value > 0 and float(value).is_integer()
    return _is_positive_int(value)


def _check_size(size: SizeDict | dict | None) -> None:
    size = dict(size) if size is not None else {}
    if set(size) not in ({"shortest_edge"}, {"height", "width"}):
        raise ValueError(f'size must be {{"shortest_edge": n}} or {{"height": h, "width": w}}, got {size}.')
    if not all(_is_positive_int(v) for v in size.values()):
        raise ValueError(
            f'size must hold positive integers, got {size}: e.g. size={{"shortest_edge": 256}} or '
            'size={"height": 512, "width": 512}.'
        )


def _check_height_width(size: SizeDict | dict | None, name: str) -> None:
    size = dict(size) if size is not None else {}
    if set(size) != {"height", "width"} or not all(_is_positive_int(v) for v in size.values()):
        raise ValueError(
            f'{name} must be {{"height": h, "width": w}} with positive integers (or one positive int for a square), '
            f"got {size}."
        )


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
