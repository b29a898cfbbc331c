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
    AutoModelForObjectDetection,
    AutoModelForSemanticSegmentation,
)

from .configuration_hf_pvt import PRESETS, HfPvtConfig
from .hub_hf_pvt import register_no_video_processor
from .image_processing_hf_pvt import HfPvtImageProcessor
from .modeling_hf_pvt import (
    HfPvtBackbone,
    HfPvtForImageClassification,
    HfPvtForObjectDetection,
    HfPvtForSemanticSegmentation,
    HfPvtModel,
    HfPvtModelOutput,
    HfPvtObjectDetectionOutput,
    HfPvtPreTrainedModel,
)
from .onnx_export import export_onnx
from .sharing import HubUploadError, make_hub_ready, push_to_hub, save_for_hub

__version__ = "0.1.0"

_AUTO_CLASSES = (
    (AutoModel, HfPvtModel),
    (AutoModelForImageClassification, HfPvtForImageClassification),
    (AutoBackbone, HfPvtBackbone),
    (AutoModelForSemanticSegmentation, HfPvtForSemanticSegmentation),
    (AutoModelForObjectDetection, HfPvtForObjectDetection),
)


def _register() -> None:
    AutoConfig.register(HfPvtConfig.model_type, HfPvtConfig, exist_ok=True)
    HfPvtConfig.register_for_auto_class()
    for auto_class, model_class in _AUTO_CLASSES:
        auto_class.register(HfPvtConfig, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_class.__name__)
    AutoImageProcessor.register(HfPvtConfig, slow_image_processor_class=HfPvtImageProcessor, exist_ok=True)
    HfPvtImageProcessor.register_for_auto_class()
    # hf_pvt has no video processor, and says so: pipeline() probes every folder for one, infers a video class
    # from the image processor's auto_map entry, and would otherwise ask whether to run the folder's code
    # (for hf_pvt's folders and for every Transformers head saved with HfPvtImageProcessor).
    register_no_video_processor(HfPvtConfig)


_register()

__all__ = [
    "PRESETS",
    "HfPvtBackbone",
    "HfPvtConfig",
    "HfPvtForImageClassification",
    "HfPvtForObjectDetection",
    "HfPvtForSemanticSegmentation",
    "HfPvtImageProcessor",
    "HfPvtModel",
    "HfPvtModelOutput",
    "HfPvtObjectDetectionOutput",
    "HfPvtPreTrainedModel",
    "HubUploadError",
    "export_onnx",
    "make_hub_ready",
    "push_to_hub",
    "save_for_hub",
]
