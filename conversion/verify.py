"""Check a converted classifier against the logits published for the real weights.

The published numbers are the first three ImageNet logits on COCO val2017 image 000000039769 (two cats),
as measured by Transformers' ports. Their preprocessing resizes the image straight to 224x224 (no crop)
and normalises with the ImageNet mean/std; that is reproduced here, not hf_pvt's own evaluation
transform. Their LayerNorm epsilon is 1e-6 everywhere, where hf_pvt keeps the authors' 1e-5 in the
patch-embedding and spatial-reduction norms, so the two agree to about 1e-2, not to float precision:
`TOLERANCE` is the largest absolute difference accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from torch import nn

PUBLISHED_LOGITS: dict[str, list[float]] = {
    "pvt-tiny": [-1.4192, -1.9158, -0.9702],
    "pvt-small": [0.4353, -0.1960, -0.2373],
    "pvt-medium": [-0.2914, -0.2231, 0.0321],
    "pvt-large": [0.3740, -0.7739, -0.4214],
    "pvt-v2-b0": [-1.1939, -1.4547, -0.1076],
    "pvt-v2-b1": [-0.4716, -0.7335, -0.4600],
    "pvt-v2-b2": [0.0795, -0.3170, 0.2247],
    "pvt-v2-b2-li": [0.0968, 0.3937, -0.4252],
    "pvt-v2-b3": [-0.4595, -0.2870, 0.0940],
    "pvt-v2-b4": [-0.1769, -0.1747, -0.0143],
    "pvt-v2-b5": [-0.2943, -0.1008, 0.6812],
}
TOLERANCE = 5e-2
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass
class VerifyResult:
    top5: list[tuple[int, str, float]]
    first_logits: list[float]
    expected: list[float] | None
    max_abs_diff: float | None

    @property
    def matches(self) -> bool | None:
        """True/False against the published logits; None where the variant has none."""
        return None if self.max_abs_diff is None else self.max_abs_diff <= TOLERANCE

    def report(self) -> str:
        lines = ["top-5:"] + [f"  {index:4d} {label:<30s} {logit:8.4f}" for index, label, logit in self.top5]
        shown = ", ".join(f"{x:.4f}" for x in self.first_logits)
        if self.expected is None:
            lines.append(f"first three logits [{shown}]; no published logits for this variant to compare with.")
        else:
            expected = ", ".join(f"{x:.4f}" for x in self.expected)
            verdict = "MATCH" if self.matches else "MISMATCH"
            lines.append(
                f"{verdict}: first three logits [{shown}] vs published [{expected}], "
                f"max abs diff {self.max_abs_diff:.4g} (tolerance {TOLERANCE:g})."
            )
            if not self.matches:
                lines.append(
                    "These weights do not reproduce the published model (random, fine-tuned or mis-converted)."
                )
        return "\n".join(lines)


def load_image_like_transformers(image_path: str | Path, size: int = 224) -> torch.Tensor:
    """The (1, 3, size, size) tensor Transformers' PVT ports fed their models: resize without crop, normalise.

    Bicubic, as `PvtImageProcessor` defaults to; the tolerance also covers a bilinear resize."""
    image = PIL.Image.open(image_path).convert("RGB").resize((size, size), PIL.Image.Resampling.BICUBIC)
    pixels = (np.asarray(image, dtype=np.float32) / 255.0 - _MEAN) / _STD
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())[None]


@torch.no_grad()
def verify_classifier(model: nn.Module, image_path: str | Path, variant: str | None) -> VerifyResult:
    """Run `model` on the image and compare its first three logits with the published ones for `variant`."""
    pixel_values = load_image_like_transformers(image_path).to(next(model.parameters()).dtype)
    logits = model.eval()(pixel_values=pixel_values).logits[0].float()
    id2label = model.config.id2label
    values, indices = logits.topk(min(5, logits.numel()))
    top5 = [(int(i), str(id2label.get(int(i), f"LABEL_{int(i)}")), float(v)) for v, i in zip(values, indices)]
    first = [float(x) for x in logits[:3]]
    expected = PUBLISHED_LOGITS.get(variant) if variant is not None else None
    diff = None if expected is None else float((logits[:3] - torch.tensor(expected)).abs().max())
    return VerifyResult(top5=top5, first_logits=first, expected=expected, max_abs_diff=diff)
