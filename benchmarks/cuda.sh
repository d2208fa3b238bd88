#!/usr/bin/env bash
# Everything this project checks and measures on a CUDA machine, in one go (a lent GPU is scarce):
# the CUDA tests, the attention and whole-edit benchmarks and a real toy-world edit on the GPU.
#   bash benchmarks/cuda.sh OUTDIR [STAGE ...]     stages: env tests demo attention edit long (default: all)
# Logs and JSON go to OUTDIR. Python packages missing there can be put in ./.whl as wheels first.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash benchmarks/cuda.sh OUTDIR [STAGE ...]}
shift
stages=${*:-env tests demo attention edit long}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/vg-site .whl/*.whl
    export PYTHONPATH=/tmp/vg-site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
videograin() { python3 -c 'import sys; from videograin.cli import main; sys.argv[0] = "videograin"; main()' "$@"; }
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUTDIR/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" > >(tee "$out/$name.log") 2>&1
    echo "== $name: exit $?"
}
for stage in $stages; do
    case $stage in
        env) step env 60 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
            python3 -c "import torch, triton, diffusers, transformers; print(torch.__version__, triton.__version__,
            diffusers.__version__, transformers.__version__, torch.cuda.get_device_name())"' ;;
        tests) step tests 180 python3 -m pytest -q -p no:cacheprovider tests/test_attention.py tests/test_wan22.py ;;
        demo) step demo 90 bash -c "$(declare -f videograin); videograin demo \
            --device cuda --out /tmp/vg-toyworld-demo --overwrite &&
            cp /tmp/vg-toyworld-demo/run.json '$out/demo_run.json' &&
            cp /tmp/vg-toyworld-demo/comparison.gif '$out/demo_comparison.gif'" ;;
        attention) step attention 240 python3 benchmarks/attention.py --device cuda --repeat 10 \
            --json "$out/attention.json"
            step attention_issue_shape 60 python3 benchmarks/attention.py --device cuda --repeat 10 \
            --frames 16 --grids 32 --heads 2 8 --dims 40
            step attention_wan_shape 120 python3 benchmarks/attention.py --device cuda --repeat 10 \
            --frames 21 9 --grids 30x52 --heads 12 --dims 128 --json "$out/attention_wan.json" ;;
        edit) step edit 150 python3 benchmarks/edit.py --device cuda --model sd15-shaped --frames 16 \
            --size 512 512 --steps 20 --variants stock fullframe videograin ;;
        long) step long_clip 240 python3 benchmarks/long_clip.py --device cuda --model sd15-shaped --size 512 512 \
            --steps 10 --frames 128 512 --full ;;
        *) echo "unknown stage $stage" >&2; exit 2 ;;
    esac
done
