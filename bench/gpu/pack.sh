#!/usr/bin/env bash
# Build, here, the bundle of Python packages that the offline GPU machine lacks for a sweep (bench/gpu/bundle.py):
#
#   bench/gpu/pack.sh [--out .gpu-bundle] [--limit-mb 60] [--cache DIR]
#
# Needs pip and PyPI (about 110 MB of wheels), then packs with xz: minutes on 2 cores. Prints the bundle's size
# and fails, writing no bundle, when it is over the limit. .gpu-bundle/ is ignored by git; a device run takes
# it with `carry: [".gpu-bundle"]` and runs bench/gpu/check.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
exec "$python" bench/gpu/bundle.py "$@"
