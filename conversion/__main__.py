"""`python -m hf_pvt.conversion SOURCE OUTPUT_DIR [options]`: the `hf-pvt-convert` command."""

import sys

from .cli import main

sys.exit(main())
