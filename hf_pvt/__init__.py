"""hf_pvt: the Pyramid Vision Transformer family (PVT v1, PVTv2) as a Hugging Face Transformers model.

Importing the package registers every class with the Auto classes, and marks them for export so that
`save_pretrained` folders also load with `trust_remote_code=True` where hf_pvt is not installed.
"""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForImageSegmentation,
    AutoModelForInstanceSegmentation,
    AutoModelForObjectDetection,
    AutoModelForSemanticSegmentation,
)

from .configuration_hf_pvt import HfPvtConfig, register_pipeline_names
from .hub_hf_pvt import register_no_video_processor
from .image_processing_hf_pvt import HfPvtImageProcessor
from .mask_rcnn_hf_pvt import HfPvtForInstanceSegmentation, HfPvtInstanceSegmentationOutput
from .modeling_hf_pvt import (
    HfPvtBackbone,
    HfPvtForImageClassification,
    HfPvtModel,
    HfPvtModelOutput,
    HfPvtPreTrainedModel,
)
from .retinanet_hf_pvt import HfPvtForObjectDetection, HfPvtObjectDetectionOutput
from .semantic_fpn_hf_pvt import HfPvtForSemanticSegmentation, HfPvtSemanticSegmenterOutput
from .sharing import HubUploadError, make_hub_ready, push_to_hub, save_for_hub
from .variants_hf_pvt import PRESETS

__version__ = "0.1.0"

_AUTO_CLASSES = (
    (AutoModel, HfPvtModel),
    (AutoModelForImageClassification, HfPvtForImageClassification),
    (AutoBackbone, HfPvtBackbone),
    (AutoModelForSemanticSegmentation, HfPvtForSemanticSegmentation),
    (AutoModelForObjectDetection, HfPvtForObjectDetection),
    (AutoModelForInstanceSegmentation, HfPvtForInstanceSegmentation),
)


def _register() -> None:
    AutoConfig.register(HfPvtConfig.model_type, HfPvtConfig, exist_ok=True)
    HfPvtConfig.register_for_auto_class()
    for auto_class, model_class in _AUTO_CLASSES:
        auto_class.register(HfPvtConfig, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_class.__name__)
    # pipeline("image-segmentation") loads through AutoModelForImageSegmentation first; given a tuple, Transformers
    # picks the class that the folder's `architectures` names, so each segmentation folder gets its own head.
    AutoModelForImageSegmentation.register(
        HfPvtConfig, (HfPvtForInstanceSegmentation, HfPvtForSemanticSegmentation), exist_ok=True
    )
    AutoImageProcessor.register(HfPvtConfig, slow_image_processor_class=HfPvtImageProcessor, exist_ok=True)
    HfPvtImageProcessor.register_for_auto_class()
    # hf_pvt has no video processor, and says so: pipeline() probes every folder for one, infers a video class
    # from the image processor's auto_map entry, and would otherwise ask whether to run the folder's code
    # (for hf_pvt's folders and for every Transformers head saved with HfPvtImageProcessor).
    register_no_video_processor(HfPvtConfig)
    # pipeline() checks class names in tables of its own, which the registrations above do not reach.
    register_pipeline_names()


_register()


def __getattr__(name: str) -> object:
    # export_onnx is imported on first use, not with the package: `python -m hf_pvt.onnx_export` would otherwise
    # find the module already imported by the package and run a second copy of it (runpy's RuntimeWarning).
    if name == "export_onnx":
        from .onnx_export import export_onnx

        globals()[name] = export_onnx
        return export_onnx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "HfPvtBackbone",
    "HfPvtConfig",
    "HfPvtForImageClassification",
    "HfPvtForInstanceSegmentation",
    "HfPvtForObjectDetection",
    "HfPvtForSemanticSegmentation",
    "HfPvtImageProcessor",
    "HfPvtInstanceSegmentationOutput",
    "HfPvtModel",
    "HfPvtModelOutput",
    "HfPvtObjectDetectionOutput",
    "HfPvtPreTrainedModel",
    "HfPvtSemanticSegmenterOutput",
    "HubUploadError",
    "export_onnx",
    "make_hub_ready",
    "push_to_hub",
    "save_for_hub",
]
