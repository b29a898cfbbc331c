"""`pipeline("image-segmentation", subtask="instance")` on a saved Mask R-CNN folder, in this Python and in one that
cannot import hf_pvt (`trust_remote_code=True`): the same instances, and nothing asked on a closed stdin."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
from conftest import FIXTURES, tiny_config
from transformers import pipeline

from hf_pvt import HfPvtForInstanceSegmentation, HfPvtImageProcessor

PHOTO = FIXTURES / "coco_000000039769.png"

PIPELINE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from PIL import Image
    from transformers import pipeline

    segmenter = pipeline("image-segmentation", model=sys.argv[1], subtask="instance", trust_remote_code=True)
    segments = segmenter(Image.open(sys.argv[2]).convert("RGB"), threshold=0.0)
    print(json.dumps([[s["label"], round(s["score"], 5), int(np.asarray(s["mask"]).sum())] for s in segments]))
    """
)
# Run before anything else in the subprocess: `import hf_pvt` (and every submodule) then fails.
BLOCK_HF_PVT = "import sys; sys.modules['hf_pvt'] = None\n"


def test_instance_pipeline_on_a_saved_folder_with_and_without_hf_pvt(tmp_path):
    config = tiny_config(
        "v2", num_labels=3, decoder_hidden_size=16, rcnn_fc_channels=32, mask_head_channels=8, mask_head_num_convs=1
    )
    model = HfPvtForInstanceSegmentation(config).eval()
    processor = HfPvtImageProcessor.for_instance_segmentation(size={"shortest_edge": 64, "longest_edge": 96})
    folder = tmp_path / "mask-rcnn"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)

    from PIL import Image

    here = pipeline("image-segmentation", model=str(folder), subtask="instance")
    segments = here(Image.open(PHOTO).convert("RGB"), threshold=0.0)
    expected = [[s["label"], round(s["score"], 5), int(np.asarray(s["mask"]).sum())] for s in segments]
    assert expected and all(score is not None for _, score, _ in expected)  # instances, not semantic classes

    script = tmp_path / "run_pipeline.py"
    script.write_text(BLOCK_HF_PVT + PIPELINE_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(folder), str(PHOTO)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "custom code" not in done.stdout + done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected
