"""Key-renaming tables from other checkpoint layouts to hf_pvt's state-dict keys.

Each table is data: `(pattern, replacement)` pairs applied with `re.sub`, in order, to every key.
`{stage}` in a replacement stands for the zero-based stage of a one-based `(?P<stage>\\d)` group, and
`{last}` for the index of the last stage.
"""

from __future__ import annotations

import re

# The authors' `pvt.py` / `pvt_v2.py` (SPEC §3), mapped onto HfPvtForImageClassification.
ORIGINAL_TO_HF_PVT: list[tuple[str, str]] = [
    (r"^patch_embed(?P<stage>\d)\.", "pvt.stages.{stage}.patch_embed."),
    (r"^pos_embed(?P<stage>\d)$", "pvt.stages.{stage}.pos_embed"),
    (r"^block(?P<stage>\d)\.(?P<block>\d+)\.", "pvt.stages.{stage}.blocks.\\g<block>."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    (r"^norm(?P<stage>\d)\.", "pvt.stages.{stage}.norm."),
    (r"^norm\.", "pvt.stages.{last}.norm."),
    (r"^cls_token$", "pvt.stages.{last}.cls_token"),
    (r"^head\.", "classifier."),
]


def rename_key(key: str, table: list[tuple[str, str]], num_stages: int = 4) -> str:
    """Apply every matching rule of `table` to `key`, in order."""
    for pattern, replacement in table:
        match = re.search(pattern, key)
        if match is None:
            continue
        stage = match.groupdict().get("stage")
        filled = replacement.replace("{last}", str(num_stages - 1))
        if stage is not None:
            filled = filled.replace("{stage}", str(int(stage) - 1))
        key = re.sub(pattern, filled, key, count=1)
    return key
