#!/usr/bin/env bash
# Run the test suite in the pinned environment (created first if missing).
#
#   tools/test.sh                 all tiers (gpu tests skip themselves without CUDA)
#   tools/test.sh -m unit         one tier: unit | dist | e2e | gpu
#   tools/test.sh tests/unit/test_config.py -k override     any pytest arguments
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$("$ROOT/tools/env.sh") || exit 1
cd "$ROOT" || exit 1
"$VENV/bin/python" -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests (exit 5); a test run that tests nothing is a failure" >&2
  exit 1
fi
exit "$rc"
