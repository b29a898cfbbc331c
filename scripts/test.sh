#!/usr/bin/env bash
# The test suite (about 9 minutes on 2 idle CPU cores). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
python -m pytest -q -p no:cacheprovider "$@"
