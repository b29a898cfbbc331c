#!/usr/bin/env bash
# The test suite (949 tests, 8-15 minutes on 2 CPU cores, depending on the host). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
python -m pytest -q -p no:cacheprovider "$@"
