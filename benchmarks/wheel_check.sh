#!/usr/bin/env bash
# Build the wheel, install it in a fresh venv outside the checkout, run the main job there,
# and check that the report names the package version (not a commit: there is no checkout).
#   bash benchmarks/wheel_check.sh [WORKDIR]     (default: a new temporary folder)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
python -m pip install -q build
python -m build --wheel --outdir "$work/dist" "$repo"
python -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q -U pip
"$work/venv/bin/python" -m pip install -q "torch==2.13.0"
"$work/venv/bin/python" -m pip install -q "$(ls "$work"/dist/kooptrain-*.whl)[reproduce]"
version="$("$work/venv/bin/python" -c 'import kooptrain; print(kooptrain.__version__)')"
cd "$work"
"$work/venv/bin/kooptrain" race --no-progress
grep -q "kooptrain $version (installed, not a git checkout)" kooptrain-race/report.md
echo "wheel check passed: kooptrain $version from $(ls dist/*.whl), report in $work/kooptrain-race"
