#!/usr/bin/env bash
# The test suite (943 tests, about 8.5 minutes on 2 idle CPU cores). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
python -m pytest -q -p no:cacheprovider "$@"
