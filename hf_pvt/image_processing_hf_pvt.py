"""Image processor for the Pyramid Vision Transformer family (PVT v1, PVTv2).

It runs on the PIL/numpy backend and needs no torchvision; torch is imported only for post-processing. Its input
checking lives in `image_checks_hf_pvt.py`, and the detectors' post-processing in `retinanet_hf_pvt.py`: both are
relative imports, which `save_pretrained` copies next to this file (with whatever they import) for
`trust_remote_code` loading.
"""

from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image
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
)
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import TensorType

from .image_checks_hf_pvt import (
    check_detection_postprocess_arguments,
    check_height_width,
    check_image_size,
    check_image_std,
    check_logits_stride,
    check_maps_match_images,
    check_padding,
    check_pixel_array,
    check_resize_options,
    check_size,
    check_stackable,
    check_target_sizes,
    detection_fields,
    flat_image_list,
    high_bit_depth_pil_to_numpy,
    prepare_detection_targets,
    segmentation_map_array,
    semantic_logits,
    semantic_logits_sizes,
    tensor_to_numpy,
)

if TYPE_CHECKING:
    import torch

# The value segmentation losses ignore (HF `semantic_loss_ignore_index`, mmseg's ignore_index).
IGNORE_INDEX = 255


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
    return_segmentation_masks (`bool`, *optional*, defaults to `self.return_segmentation_masks`):
        With `annotations`, also decode each object's COCO `segmentation` into a binary mask that follows the
        image (resize, flip, padding) and comes back in `labels` as `masks` (instance segmentation).
    align_to_multiple_of (`int`, *optional*, defaults to `self.align_to_multiple_of`):
        After the resize to `size`, resize each side once more, up to the next multiple of it (the authors'
        `AlignResize`, which resizes where others pad). `None` keeps the size that `size` gives.
    resize_backend (`str`, *optional*, defaults to `self.resize_backend`):
        `"pil"` resizes with PIL (torchvision's arithmetic; antialiased when shrinking). `"opencv"` resizes 8-bit
        images as `cv2.resize(..., INTER_LINEAR)` does, which is what mmcv, and so MMSegmentation's pipelines,
        use: reproduced value for value in numpy (no OpenCV needed), without antialiasing. It needs bilinear
        `resample`; float images and segmentation maps are still resized by PIL.
    logits_stride (`int`, *optional*, defaults to `self.logits_stride`):
        The stride of the model's segmentation logits relative to its input (4 for hf_pvt's Semantic FPN; 1 for
        heads whose logits come at the input size). When set, `post_process_semantic_segmentation` resizes the
        logits first to `logits_stride` times their size, the network input, and then to `target_sizes`, as
        MMSegmentation's whole-image inference does. `None` resizes them straight to `target_sizes`.
    """

    do_reduce_labels: bool
    do_horizontal_flip: bool
    pad_size_divisor: int
    return_segmentation_masks: bool
    align_to_multiple_of: int | None
    resize_backend: str
    logits_stride: int | None


class HfPvtImageProcessor(PilBackend):
    r"""
    Image processor for PVT / PVTv2.

    The defaults reproduce the authors' evaluation transform exactly (torchvision on PIL images):
    `Resize(256, bicubic)` on the shorter side, `CenterCrop(224)`, scale to [0, 1], ImageNet
    mean/std. For dense prediction use [`~HfPvtImageProcessor.for_dense_prediction`] (or set
    `do_center_crop=False` and `size={"height": h, "width": w}`), which keeps the whole image.

    For object detection use [`~HfPvtImageProcessor.for_object_detection`]: the RetinaNet transform of
    the papers (mmdet): keep-ratio resize into 1333x800, bilinear, no crop, padding to a multiple of 32.

    For the released Semantic FPN segmenters use [`~HfPvtImageProcessor.for_semantic_segmentation`]: the authors'
    ADE20K test transform (keep-ratio into 2048x512, then each side resized to a multiple of 32, both with OpenCV's
    bilinear arithmetic) and MMSegmentation's whole-image post-processing.

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

    For instance segmentation use [`~HfPvtImageProcessor.for_instance_segmentation`] (the detection transform
    with `return_segmentation_masks=True`): each annotation's `segmentation` (COCO polygons, uncompressed or
    compressed RLE; decoded by pycocotools, `pip install pycocotools`) also comes back, in `labels` as `masks`
    (n, H, W) bool at `pixel_values`' size, one per box: resized with the image by nearest neighbour (as
    MMDetection resizes bitmap masks), flipped with it, zero in the padding. Crowd regions (`iscrowd=1`) are left
    out with their boxes, as MMDetection's Mask R-CNN never trains on them (its `gt_bboxes_ignore`).
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
    return_segmentation_masks = False
    align_to_multiple_of = None
    resize_backend = "pil"
    logits_stride = None

    def __init__(self, **kwargs: Unpack[HfPvtImageProcessorKwargs]) -> None:
        super().__init__(**kwargs)
        check_size(self.size)
        if self.crop_size is not None:
            check_height_width(self.crop_size, "crop_size")
        check_padding(self.pad_size_divisor, self.pad_size)
        check_resize_options(self.align_to_multiple_of, self.resize_backend, self.resample)
        check_logits_stride(self.logits_stride)

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
        normalization, zero padding with `pixel_mask`. Keyword arguments override.

        The padding goes to one canvas for every image, the largest size `size` can give rounded up to 32
        (1344x1344; none for a `size` without a bound), so that images processed one at a time stack into a batch,
        as `pipeline(..., batch_size=n)` stacks them. `HfPvtForObjectDetection` reads each image's own area from
        `pixel_mask` and leaves the rest of the canvas out, so the detections are those of MMDetection's padding to
        a multiple of 32. `pad_size=None` pads each batch to its largest image instead.
        """
        defaults = {
            "size": {"shortest_edge": 800, "longest_edge": 1333},
            "resample": PILImageResampling.BILINEAR,
            "do_center_crop": False,
            "do_pad": True,
            "pad_size_divisor": 32,
        }
        options = {**defaults, **kwargs}
        if "pad_size" not in kwargs:
            options["pad_size"] = largest_padded_size(cls(**options))
        return cls(**options)

    @classmethod
    def for_semantic_segmentation(cls, **kwargs: Any) -> "HfPvtImageProcessor":
        """The authors' Semantic FPN test transform (MMSegmentation v0.13; `configs/_base_/datasets/ade20k.py` and
        `align_resize.py` of their segmentation code): keep-ratio resize into 2048x512 (`{"shortest_edge": 512,
        "longest_edge": 2048}`, mmcv rounding), then each side resized up to a multiple of 32 (`AlignResize`), both
        with OpenCV's 8-bit bilinear arithmetic; ImageNet normalisation; ADE20K label reduction for segmentation
        maps. `post_process_semantic_segmentation` then resizes the stride-4 logits to the network input and from
        there to each image's original size, argmax last, as `EncoderDecoder.whole_inference`. Keyword arguments
        override; `do_pad=True` pads every image to one canvas, the largest size the preset gives (2048x2048), so that
        `pipeline("image-segmentation", batch_size=n)` can stack images of different sizes.
        """
        defaults = {
            "size": {"shortest_edge": 512, "longest_edge": 2048},
            "resample": PILImageResampling.BILINEAR,
            "do_center_crop": False,
            "align_to_multiple_of": 32,
            "resize_backend": "opencv",
            "logits_stride": 4,
            "do_reduce_labels": True,
        }
        options = {**defaults, **kwargs}
        if options.get("do_pad") and "pad_size" not in kwargs:
            # One canvas for every image (2048x2048 for the preset's size), so that images processed one at a time
            # stack into a batch, as `pipeline(..., batch_size=n)` stacks them; the model reads each image's area
            # from `pixel_mask` and leaves the rest out.
            options["pad_size"] = largest_padded_size(cls(**options))
        return cls(**options)

    @classmethod
    def for_instance_segmentation(cls, **kwargs: Any) -> "HfPvtImageProcessor":
        """The papers' Mask R-CNN transform (mmdet v2): the detection transform of `for_object_detection` (keep-ratio
        into 1333x800, bilinear, no crop, padding to a multiple of 32 with `pixel_mask`) with
        `return_segmentation_masks=True`, so COCO annotations also give the instance `masks`. Post-process with
        `post_process_instance_segmentation` (one map per image) or `post_process_instances` (every instance's
        own mask, for evaluation). Keyword arguments override.
        """
        # Padding per batch: Mask R-CNN computes over the whole padded input, so a fixed canvas would cost time.
        return cls.for_object_detection(**{"return_segmentation_masks": True, "pad_size": None, **kwargs})

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
            check_size(size)
        if do_center_crop:
            check_height_width(crop_size, "crop_size")
        if kwargs.get("do_pad"):
            check_padding(kwargs.get("pad_size_divisor"), kwargs.get("pad_size"))
        if kwargs.get("do_normalize"):
            check_image_std(kwargs.get("image_std"))
        check_resize_options(
            kwargs.get("align_to_multiple_of"),
            kwargs.get("resize_backend", self.resize_backend),
            kwargs.get("resample") if kwargs.get("do_resize") else None,
        )
        check_logits_stride(kwargs.get("logits_stride"))

    # ----------------------------------------------------------------------------- inputs

    def _prepare_images_structure(self, images: ImageInput, expected_ndims: int = 3) -> list:
        # Replaces make_flat_list_of_images, which rejects 2-D grayscale arrays and empty lists
        # with an unhelpful "could not make a flat list" message.
        return flat_image_list(images, expected_ndims)

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
            image = high_bit_depth_pil_to_numpy(image)
        if is_torch_tensor(image):
            image = tensor_to_numpy(image)
        if isinstance(image, np.ndarray):
            image = check_pixel_array(image, input_data_format, where)
            if image.ndim == 2:  # grayscale; the base RGB conversion only understands 3-D arrays
                image, input_data_format = image[None], ChannelDimension.FIRST
        image = super().process_image(image, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format)
        check_image_size(image)
        return image

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
            targets = prepare_detection_targets(annotations, [image.shape[-2:] for image in images])
            if kwargs["return_segmentation_masks"]:
                from .instance_masks_hf_pvt import masks_for_targets

                for target, masks in zip(targets, masks_for_targets(annotations, targets)):
                    target["masks"] = masks
        data = {"pixel_values": self._preprocess(images, **kwargs)}
        # Sizes after resize/flip/crop, before padding: boxes follow the resize, the mask marks these pixels.
        sizes = [image.shape[-2:] for image in data["pixel_values"]]

        if segmentation_maps is not None:
            maps = [segmentation_map_array(m) for m in flat_image_list(segmentation_maps, 2)]
            check_maps_match_images(images, maps)
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
            check_stackable(data)
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
        align_to_multiple_of: int | None = None,
        resize_backend: str = "pil",
        **kwargs: Any,
    ) -> list[np.ndarray]:
        processed = []
        for image in images:
            if do_resize:
                image = self.resize(image, size, resample, resize_backend=resize_backend)
                if align_to_multiple_of:
                    # AlignResize: a second resize (not a pad) of each side up to the next multiple.
                    height, width = (
                        -(-side // align_to_multiple_of) * align_to_multiple_of for side in image.shape[-2:]
                    )
                    aligned = SizeDict(height=height, width=width)
                    image = self.resize(image, aligned, resample, resize_backend=resize_backend)
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
        resize_backend: str | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Resize a (C, H, W) array with PIL, as torchvision's `Resize` does on PIL images, or, with
        `resize_backend="opencv"`, 8-bit images as OpenCV's bilinear `cv2.resize` does.

        When enlarging (every COCO image under the detection preset), PIL's bilinear filter is mmcv/OpenCV's
        half-pixel bilinear interpolation (8-bit results may round one level apart); when shrinking, PIL
        antialiases where OpenCV samples.
        """
        check_size(size)
        resample = self.resample if resample is None else resample
        resize_backend = self.resize_backend if resize_backend is None else resize_backend
        height, width = image.shape[-2:]
        new_height, new_width = resized_size(height, width, size)
        if (new_height, new_width) == (height, width):
            return image
        if resize_backend == "opencv" and image.dtype == np.uint8 and int(resample) == PILImageResampling.BILINEAR:
            return opencv_bilinear_resize(image, new_height, new_width)
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
        check_height_width(size, "crop_size")
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
        preprocessing kept the whole image (`do_center_crop=False`). With `logits_stride` set (the semantic
        segmentation preset: 4), the logits are first resized to that multiple of their size, the network input,
        and from there to the target size, as MMSegmentation's `EncoderDecoder.whole_inference`.

        For a padded batch (`pixel_mask`), Semantic FPN's output says where each image's logits are
        (`logits_sizes`): only those are used, so an image's map is what it would be alone.

        With `return_segmentation_scores=True` each item is a `SemanticSegmentationPostProcessorOutput` with
        `segmentation` (H, W) and `segmentation_scores` (num_labels, H, W): the (upsampled) logits.
        """
        from .semantic_fpn_hf_pvt import resized_logits, upsampled_class_map

        logits = semantic_logits(outputs)
        sizes = check_target_sizes(target_sizes, len(logits), "logits")
        regions = semantic_logits_sizes(outputs, logits)
        results = []
        for index, logit in enumerate(logits):
            if regions is not None:  # padded inputs: each image's own logits only
                logit = logit[:, : regions[index][0], : regions[index][1]]
            steps = []
            if sizes is not None:
                if self.logits_stride:  # first to the network input's size, as whole-image inference does
                    steps.append([side * self.logits_stride for side in logit.shape[-2:]])
                steps.append(list(sizes[index]))
            if not return_segmentation_scores:
                results.append(upsampled_class_map(logit, steps) if steps else logit.argmax(dim=0))
                continue
            scores = resized_logits(logit, steps) if steps else logit
            results.append(
                _segmentation_output(
                    data={"segmentation": scores.argmax(dim=0), "segmentation_scores": scores.to(logit.dtype)}
                )
            )
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

        mmdet v2.13's test procedure (`retinanet_hf_pvt.retinanet_postprocess`): per level the `nms_pre` best
        anchors (<= 0: all), decoded and clipped to the image's valid region (`outputs.image_sizes`); then
        (anchor, class) pairs scoring above `threshold`, class-wise NMS at `iou_threshold`, at most
        `max_per_image` detections (<= 0: all), best first. Boxes are in pixels of the resized image, or, with
        `target_sizes` (a list of (height, width) or a (B, 2) tensor, usually the original sizes), scaled by
        `target / image_sizes` and clipped to the target. Boxes and scores are float32.

        `outputs`: the model output (`HfPvtObjectDetectionOutput` or a dict with `logits`, `pred_box_deltas`,
        `anchors`, `spatial_shapes`, `image_sizes`) or its `return_dict=False` tuple, with or without the leading
        losses; or the per-level maps of hf_pvt's ONNX export (tuples of `logits` and `pred_box_deltas` maps, with
        per-level `anchors` and `image_sizes`).
        """
        import torch

        from .retinanet_hf_pvt import retinanet_postprocess

        check_detection_postprocess_arguments(threshold, nms_pre, iou_threshold, max_per_image)
        batch_size, image_levels, image_sizes = detection_fields(outputs)
        sizes = check_target_sizes(target_sizes, batch_size, "detections")
        results = []
        for index in range(batch_size):
            valid_height, valid_width = (int(v) for v in image_sizes[index])
            detections = retinanet_postprocess(
                *image_levels(index),
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

    def post_process_instance_segmentation(
        self,
        outputs: Any,
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.8,
        target_sizes: "list[tuple[int, int]] | torch.Tensor | None" = None,
        return_coco_annotation: bool = False,
        return_binary_maps: bool = False,
    ) -> list[dict[str, Any]]:
        """Mask R-CNN outputs -> per image Transformers' instance segmentation result (Mask2Former's format):
        `{"segmentation": (H, W) int64 map of instance ids, -1 where there is none, "segments_info": [{"id",
        "label_id", "was_fused": False, "score"}, ...]}`, instances best first.

        The instances are those of `post_process_instances` scoring above `threshold` (masks pasted at
        `mask_threshold`, at `target_sizes` or at the images' processed size). One map cannot show overlaps: each
        instance takes its pixels not yet taken by a better one, and an instance left with no more than
        `overlap_mask_area_threshold` of its own area is dropped (its pixels go to the instances below it). For
        every instance's whole mask (evaluation, COCO results) use `post_process_instances`.

        `return_coco_annotation=True` gives `segmentation` as a list of COCO RLE dicts, one per `segments_info`
        entry (the pixels the map gives it); `return_binary_maps=True` as an (n, H, W) bool tensor of the placed
        instances' whole masks.

        The image-segmentation pipeline asks every processor that has this method for instances first. A semantic
        segmentation output (4-D `logits`, e.g. Semantic FPN saved with this processor class) therefore comes back
        as `post_process_semantic_segmentation` gives it, in this format: the class-id map with one segment per
        class present (`id` = `label_id` = the class, `score` None), which is what the pipeline's semantic
        subtask returns; `threshold` and the mask arguments do not apply to it.
        """
        from .instance_masks_hf_pvt import instance_segmentation_results

        return instance_segmentation_results(
            outputs,
            threshold,
            mask_threshold,
            overlap_mask_area_threshold,
            target_sizes,
            return_coco_annotation,
            return_binary_maps,
            semantic_postprocess=self.post_process_semantic_segmentation,
        )

    def post_process_instances(
        self,
        outputs: Any,
        threshold: float = 0.05,
        mask_threshold: float = 0.5,
        target_sizes: "list[tuple[int, int]] | torch.Tensor | None" = None,
        return_rle: bool = False,
    ) -> list[dict[str, Any]]:
        """Mask R-CNN outputs -> every instance of each image with its own whole mask (overlaps kept), as
        MMDetection v2.13 evaluates it: `{"scores" (k,), "labels" (k,) int64, "boxes" (k, 4) x1, y1, x2, y2,
        "masks" (k, H, W) bool}`, best first, plus `"rles"` (k COCO compressed RLE dicts, what pycocotools' `segm`
        evaluation reads) with `return_rle=True`.

        Detections scoring above `threshold` (the papers' 0.05; the model already stops at
        `config.rcnn_score_threshold`); each 28x28 mask probability map is pasted over its box by bilinear
        sampling and thresholded at `mask_threshold` (>=). Boxes and masks are in pixels of `target_sizes` (a
        list of (height, width) or a (B, 2) tensor, usually the original sizes) or, without it, of the processed
        image without its padding (`outputs.image_sizes`). `outputs` must come from the model in evaluation mode.
        """
        from .instance_masks_hf_pvt import instance_results

        return instance_results(outputs, threshold, mask_threshold, target_sizes, return_rle)


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


def largest_padded_size(processor: "HfPvtImageProcessor") -> dict[str, int] | None:
    """The largest (height, width) `processor` can give an image, rounded up to its `pad_size_divisor`: a canvas every
    image fits, or None when `size` sets no bound (`{"shortest_edge": n}` alone) or the processor does not resize."""
    size, divisor = processor.size, processor.pad_size_divisor
    if not processor.do_resize or size is None:
        return None
    if size.height and size.width:
        height, width = size.height, size.width
    elif size.longest_edge:
        height = width = size.longest_edge
    else:
        return None
    align = processor.align_to_multiple_of
    if align:
        height, width = (-(-side // align) * align for side in (height, width))
    return {"height": -(-height // divisor) * divisor, "width": -(-width // divisor) * divisor}


def _segmentation_output(data: dict) -> BatchFeature:
    # Transformers >= 5.x returns this BatchFeature subclass; older 5.x releases lack it, and a plain
    # BatchFeature offers the same item and attribute access.
    try:
        from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
    except ImportError:
        return BatchFeature(data=data)
    return SemanticSegmentationPostProcessorOutput(data=data)


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
    labels = {
        "class_labels": target["class_labels"],
        "boxes": center_size.astype(np.float32),
        "image_id": target["image_id"],
        "orig_size": target["orig_size"],
        "size": np.asarray(canvas_size, dtype=np.int64),
    }
    if "masks" in target:  # instance masks follow the image: resize, flip, padding
        from .instance_masks_hf_pvt import place_masks

        labels["masks"] = place_masks(target["masks"], image_size, canvas_size, flipped)
    return labels


__all__ = ["HfPvtImageProcessor"]


def _opencv_taps(source: int, target: int, clamp_weights: bool) -> tuple[np.ndarray, ...]:
    """Source indices and 11-bit fixed-point weights of OpenCV's bilinear resize along one axis: half-pixel centres
    in float32, each weight rounded on its own. Columns outside the image take the border pixel with weight one;
    rows keep the computed weights and only clamp their indices (OpenCV's two passes differ there, and 8-bit
    results show it)."""
    centre = ((np.arange(target) + 0.5) * (source / target) - 0.5).astype(np.float32)
    first = np.floor(centre).astype(np.int64)
    fraction = centre - first.astype(np.float32)
    if clamp_weights:
        fraction[(first < 0) | (first >= source - 1)] = 0.0
    weight_first = np.rint((np.float32(1.0) - fraction) * np.float32(2048)).astype(np.int64)
    weight_second = np.rint(fraction * np.float32(2048)).astype(np.int64)
    return np.clip(first, 0, source - 1), np.clip(first + 1, 0, source - 1), weight_first, weight_second


def opencv_bilinear_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """A (C, H, W) uint8 image resized as `cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)` on
    its (H, W, C) layout: a horizontal pass kept in 11-bit fixed point, then the vertical pass in the rounding of
    OpenCV's vectorised code (each product shifted down by 4 and 16 bits before the sum, then 2 more, rounded).
    Equal value for value to OpenCV 4.5 and 5.1 on the cases tests/fixtures/opencv_bilinear_cases.npz records."""
    x_first, x_second, wx_first, wx_second = _opencv_taps(image.shape[-1], width, clamp_weights=True)
    y_first, y_second, wy_first, wy_second = _opencv_taps(image.shape[-2], height, clamp_weights=False)
    pixels = image.astype(np.int64)
    rows = pixels[..., x_first] * wx_first + pixels[..., x_second] * wx_second
    top = ((rows[:, y_first] >> 4) * wy_first[:, None]) >> 16
    bottom = ((rows[:, y_second] >> 4) * wy_second[:, None]) >> 16
    return np.clip((top + bottom + 2) >> 2, 0, 255).astype(np.uint8)
