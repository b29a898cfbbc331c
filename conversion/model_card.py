"""Regenerate the committed model cards of the 11 released classifiers, the 11 released RetinaNet detectors, the 11
released Mask R-CNN models and the 11 released Semantic FPN segmenters in `model_cards/` (tests check that they are
up to date):

    python -m hf_pvt.conversion.model_card [--output-dir model_cards]

The cards are `hf_pvt.model_cards`' (`render_variant_cards`, `render_detector_cards`, `render_mask_rcnn_cards`,
`render_segmenter_cards`): the same renderer as the converter's and `hf_pvt.make_hub_ready`'s, with the facts of
`hf_pvt.variants_hf_pvt`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_pvt.model_cards import (
    render_detector_cards,
    render_mask_rcnn_cards,
    render_segmenter_cards,
    render_variant_cards,
)

REPO_ROOT_CARDS = Path(__file__).resolve().parent.parent / "model_cards"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the model cards of the released variants.")
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT_CARDS)
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    cards = {
        **render_variant_cards(),
        **render_detector_cards(),
        **render_mask_rcnn_cards(),
        **render_segmenter_cards(),
    }
    for name, card in cards.items():
        (args.output_dir / name).write_text(card)
    print(f"wrote {len(cards)} cards to {args.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
