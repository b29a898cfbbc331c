"""What a Hub folder needs so that a Transformers head on an hf_pvt backbone loads where hf_pvt is not installed.

UperNet, DETR, Mask2Former and the other heads of Transformers take an `HfPvtConfig` as `backbone_config`. Their
folders name their own model type (`upernet`, `detr`, ...), which Transformers knows, and nest
`{"model_type": "hf_pvt", ...}`, which it does not. `hf_pvt.save_for_hub` copies this module next to the weights,
with the hf_pvt modules it imports, and sets the folder's `auto_map` to `{"AutoConfig": "hub_hf_pvt.<HeadConfig>"}`
(e.g. `hub_hf_pvt.UperNetConfig`). With `trust_remote_code=True` Transformers then imports this module from the
folder, which

- registers hf_pvt's configuration, backbone and image processor with the Auto classes (unless hf_pvt itself, or
  another folder's copy, already did), so the nested backbone configuration and `load_backbone` resolve;
- answers the attribute lookup `hub_hf_pvt.UperNetConfig` with a subclass of Transformers' own `UperNetConfig` that
  differs only in where it lives. Nothing here is written per head type: the name in `auto_map` is the only
  head-specific part. The subclass keeps its head's name, so every Auto class still maps it to Transformers' own
  model class, and, being a remote-code class, it saves this module again when the model is saved.

This module is also hf_pvt's statement that it has no video processor (`register_no_video_processor`), which keeps
`pipeline()` from asking whether to run a folder's code.
"""

from __future__ import annotations

from typing import Any

import transformers
from transformers import AutoBackbone, AutoConfig, AutoImageProcessor
from transformers.configuration_utils import PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING
from transformers.utils.hub import TRANSFORMERS_DYNAMIC_MODULE_NAME

from .configuration_hf_pvt import HfPvtConfig
from .image_processing_hf_pvt import HfPvtImageProcessor
from .modeling_hf_pvt import HfPvtBackbone

# One subclass per head configuration class, so that every lookup of a name returns the same class.
_SHAREABLE_CONFIGS: dict[type[PreTrainedConfig], type[PreTrainedConfig]] = {}


class HfPvtVideoProcessor:
    """hf_pvt's answer to Transformers' search for a video processor: there is none.

    `pipeline()` looks for a video processor in every model folder. Finding none by name, it turns the folder's
    `auto_map` entry `image_processing_hf_pvt.HfPvtImageProcessor` into `...HfPvtVideoProcessor` and, since the
    folder then seems to hold custom video code, asks "Do you wish to run the custom code? [y/N]" (whatever the
    head: UperNet and DETR folders carry the same image processor). Registered under this name, the class ends
    that search locally; loading it says what to use instead.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError(self._message())

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any = None, *args: Any, **kwargs: Any) -> None:
        raise ValueError(cls._message(pretrained_model_name_or_path))

    @staticmethod
    def _message(where: Any = None) -> str:
        source = f" {where}" if where is not None else ""
        return (
            f"hf_pvt models take images, not videos: the hf_pvt model{source} has no video processor. Load its "
            "image processor with AutoImageProcessor.from_pretrained instead."
        )


def register_no_video_processor(config_class: type[PreTrainedConfig]) -> None:
    """Record in Transformers' video-processor mapping that `config_class` has none (see `HfPvtVideoProcessor`).

    `AutoVideoProcessor.register` would demand torchvision, hence the mapping itself.
    """
    marker = {"torchvision": HfPvtVideoProcessor, "pil": HfPvtVideoProcessor}
    VIDEO_PROCESSOR_MAPPING.register(config_class, marker, exist_ok=True)


def register_backbone() -> None:
    """Register this copy of hf_pvt's configuration, backbone and image processor with the Auto classes.

    An imported hf_pvt is never replaced: its classes serve every folder. Without it, the folder being loaded
    registers its own copy, replacing another folder's, so that each folder's weights meet the code saved with them.
    """
    registered = CONFIG_MAPPING._extra_content.get(HfPvtConfig.model_type)
    if registered is HfPvtConfig or (registered is not None and not _is_remote_code(registered)):
        return
    AutoConfig.register(HfPvtConfig.model_type, HfPvtConfig, exist_ok=True)
    AutoBackbone.register(HfPvtConfig, HfPvtBackbone, exist_ok=True)
    AutoImageProcessor.register(HfPvtConfig, slow_image_processor_class=HfPvtImageProcessor, exist_ok=True)
    register_no_video_processor(HfPvtConfig)
    # Saving a model loaded from such a folder writes the code again, as hf_pvt itself does.
    HfPvtConfig.register_for_auto_class()
    HfPvtBackbone.register_for_auto_class("AutoBackbone")
    HfPvtImageProcessor.register_for_auto_class()


def _is_remote_code(cls: type) -> bool:
    # Transformers imports a folder's code as `transformers_modules.<folder>.<module>`.
    return cls.__module__.startswith(f"{TRANSFORMERS_DYNAMIC_MODULE_NAME}.")


def shareable_config_class(config_class: type[PreTrainedConfig]) -> type[PreTrainedConfig]:
    """The class a Hub folder names in `auto_map["AutoConfig"]` for a head whose configuration is `config_class`.

    It is a subclass of Transformers' own class, with the same name and behaviour, defined in this module and marked
    for the `AutoConfig` export, so that `save_pretrained` copies this module next to the weights.
    """
    if config_class.__module__ == __name__:
        return config_class
    if getattr(transformers, config_class.__name__, None) is not config_class:
        raise ValueError(
            f"{config_class.__module__}.{config_class.__name__} is not one of Transformers' configuration classes: "
            "a Hub folder can name only those (by name) in auto_map. Give a custom configuration class its own "
            "module and call `register_for_auto_class()` on it instead."
        )
    if config_class not in _SHAREABLE_CONFIGS:
        name = config_class.__name__
        attributes = {
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"Transformers' `{name}`, as named by the `auto_map` of Hub folders with an hf_pvt backbone.",
            "_auto_class": "AutoConfig",
        }
        _SHAREABLE_CONFIGS[config_class] = type(name, (config_class,), attributes)
    return _SHAREABLE_CONFIGS[config_class]


def __getattr__(name: str) -> type[PreTrainedConfig]:
    """`hub_hf_pvt.UperNetConfig`, `hub_hf_pvt.DetrConfig`...: the head configuration a folder's auto_map names."""
    base = None if name.startswith("_") else getattr(transformers, name, None)
    if not (isinstance(base, type) and issubclass(base, PreTrainedConfig)) or base is PreTrainedConfig:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    register_backbone()
    return shareable_config_class(base)


__all__ = ["HfPvtVideoProcessor", "register_backbone", "register_no_video_processor", "shareable_config_class"]
