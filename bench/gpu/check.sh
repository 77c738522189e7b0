#!/usr/bin/env bash
# The offline GPU check, one command, run from the checkout on the GPU machine with the bundle beside it:
#
#   bench/gpu/check.sh [--dry-run] OUT_DIR [check.py options, e.g. --parts train,fsdp]
#
# Unpacks .gpu-bundle/site-packages.tar.xz (bench/gpu/pack.sh builds it) into $GPU_SITE (default
# /tmp/alphasweep-site), puts it and the checkout on PYTHONPATH (no pip, no index), and runs bench/gpu/check.py,
# which writes OUT_DIR/gpu-check.json and OUT_DIR/gpu-check.log within 8 minutes in all. --dry-run runs the
# same parts on the CPU at toy sizes, with the bundle if there is one, else with this Python's own packages.
set -euo pipefail
cd "$(dirname "$0")/../.."
started=$SECONDS
dry=()
if [[ ${1:-} == --dry-run ]]; then dry=(--dry-run); shift; fi
out=${1:?usage: bench/gpu/check.sh [--dry-run] OUT_DIR [check.py options]}
shift
python=${PYTHON:-python3}
bundle=${GPU_BUNDLE:-.gpu-bundle/site-packages.tar.xz}
site=${GPU_SITE:-/tmp/alphasweep-site}

if [[ -f $bundle ]]; then
    rm -rf "$site" && mkdir -p "$site"
    if command -v xz >/dev/null; then
        tar -xJf "$bundle" -C "$site"
    else  # Python's own lzma
        "$python" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
            "$bundle" "$site"
    fi
    export ALPHASWEEP_GPU_SITE=$site PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    echo "[gpu-check] unpacked $bundle into $site in $((SECONDS - started)) s"
elif [[ ${#dry[@]} -eq 0 ]]; then
    echo "no bundle at $bundle: build it here with bench/gpu/pack.sh, then carry .gpu-bundle" >&2
    exit 2
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1  # nothing is reachable there
unset MLFLOW_TRACKING_URI ALPHASWEEP_OPTUNA_STORAGE ALPHASWEEP_STORAGE_PATH  # the sweep keeps its stores in OUT
budget=$((480 - (SECONDS - started) - 15))  # 8 minutes, less the unpacking and a margin to write the figures
[[ ${#dry[@]} -eq 0 ]] || budget=${DRY_RUN_BUDGET_S:-1500}
exec "$python" bench/gpu/check.py "${dry[@]}" --budget-s "$budget" "$out" "$@"
