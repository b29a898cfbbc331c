"""Checkpoint conversion: the authors', Transformers' and timm's PVT layouts to hf_pvt safetensors folders.

The repository folder `conversion/` installs as the subpackage `hf_pvt.conversion`: import it under that name only
(`import hf_pvt.conversion`, `hf-pvt-convert`, `python -m hf_pvt.conversion`). Its modules import each other
relatively; imported as a top-level `conversion` from the repository root they would exist twice.

- `sources.py`: read a checkpoint file or folder, in whatever layout, into the authors' key layout;
- `detect.py`: what the checkpoint is: architecture, released variant, task, published head or not;
- `convert.py`: build the configuration and the model (strict accounting of every tensor), write the folder;
- `cli.py`: the `hf-pvt-convert` command (arguments checked first, one `error:` line on failure);
- `layouts.py` (renaming tables), `output_folder.py` (atomic writes), `verify.py` (published logits),
  `model_card.py` (regenerates `model_cards/`), `ade20k_labels.py`, `coco_labels.py`, `imagenet_labels.py`.
"""
