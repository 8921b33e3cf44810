#!/usr/bin/env bash
# The GPU checks of #17 in one run with a hard deadline (docs/benchmarks.md, "Running the GPU checks").
#
#   bash benchmarks/gpu_checks.sh --wheels .whl --out "$OUT" --bundle  # the GPU machine: 8 minutes at most
#   bash benchmarks/gpu_checks.sh --dry-run --out /tmp/gpu-dry   # CPU, tiny shapes, end to end (~2-3 min)
#
# Parts run in order of importance, each under its own timeout; a part that no longer fits
# before the deadline is skipped. Each writes OUT/<part>.log (and a JSON where it has figures);
# OUT/gpu_checks.log is the whole log, OUT/figures.json every figure (null where skipped), and
# the table the issue asks for is printed last. --only runs just the named parts (a second call
# for what the deadline skipped). --bundle then packs everything but those two
# into OUT/parts.tar.gz (the device tool brings back at most 8 files). Random weights: nothing
# is downloaded.
# Needs a CUDA torch and triton; transformers >= 5.18 and diffusers come as wheels (--wheels)
# where the machine lacks them (benchmarks/gpu_wheels.sh fetches them).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=runs/gpu-checks
WHEELS=""
DRY=0
BUNDLE=0
ONLY=""
DEADLINE=480 # seconds for the whole script, set-up and report included
while (($#)); do
	case "$1" in
	--out) OUT=$2 && shift 2 ;;
	--wheels) WHEELS=$2 && shift 2 ;;
	--dry-run) DRY=1 && shift ;;
	--bundle) BUNDLE=1 && shift ;;
	--only) ONLY=",$2," && shift 2 ;;
	--deadline) DEADLINE=$2 && shift 2 ;;
	*) echo "usage: $0 [--out DIR] [--wheels DIR] [--dry-run] [--bundle] [--only PART,...] [--deadline SECONDS]" >&2 && exit 2 ;;
	esac
done
START=$(date +%s)
RESERVE=15 # kept back for the report
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
: >"$OUT/parts.tsv"
exec > >(tee "$OUT/gpu_checks.log") 2>&1

if [[ -z "${PYTHON:-}" ]]; then
	if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
SITE=""
if [[ -n "$WHEELS" ]]; then
	SITE=$(mktemp -d /tmp/janus-site.XXXXXX)
	# --no-deps: the machine's own torch, numpy, tokenizers... stay; only what it lacks is added.
	"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl ||
		{ echo "pip install of $WHEELS failed" && exit 1; }
fi
export PYTHONPATH="${SITE:+$SITE:}$PWD:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 JANUS_NO_PROGRESS=1
export TOKENIZERS_PARALLELISM=false JANUS_CACHE="${JANUS_CACHE:-/tmp/janus-cache}"
[[ $DRY == 1 ]] && export CUDA_VISIBLE_DEVICES="" # the dry run never touches a GPU, even on a GPU machine

echo "gpu_checks: deadline ${DEADLINE}s, dry run $DRY, out $OUT, python $PYTHON"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| transformers', transformers.__version__)"
"$PYTHON" -c "import diffusers, triton; print('diffusers', diffusers.__version__, '| triton', triton.__version__)" ||
	echo "diffusers or triton missing: their parts will fail"

# part NAME BUDGET_S MIN_S COMMAND...: run COMMAND under min(BUDGET, time left); skip it if under MIN_S is left.
part() {
	local name=$1 budget=$2 need=$3
	shift 3
	[[ -n "$ONLY" && "$ONLY" != *",$name,"* && $name != ceilings ]] && return
	local left=$((DEADLINE - RESERVE - ($(date +%s) - START)))
	if ((left < need)); then
		echo "### $name: skipped (${left}s left, needs ${need}s)"
		printf '%s\tskipped\t0\n' "$name" >>"$OUT/parts.tsv"
		return
	fi
	local limit=$((budget < left ? budget : left)) t0
	t0=$(date +%s)
	echo
	echo "### $name (limit ${limit}s): $*"
	timeout -k 5 "$limit" "$@" 2>&1 | grep --line-buffered -v "Loading weights\|Loading pipeline components\|it/s\]$" | tee "$OUT/$name.log"
	local rc=${PIPESTATUS[0]} status=ok
	((rc == 124 || rc == 137)) && status=timeout
	((rc != 0 && rc != 124 && rc != 137)) && status="failed($rc)"
	echo "### $name: $status in $(($(date +%s) - t0))s"
	printf '%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - t0))" >>"$OUT/parts.tsv"
}

peak() { "$PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))['copy_gbs'])" "$OUT/ceilings.json" 2>/dev/null; }
PY="$PYTHON"
if [[ $DRY == 1 ]]; then
	DRYFLAG=--dry-run
	JANUS=(--batch 16,64 --repeats 1)
	JANUS128=(--batch 128 --repeats 1)
	COMPILED=(--batch 16 --repeats 1)
	FLUX=()
	SFT=(--steps 2 --batch 2)
	GRPO=(--steps 1 --prompts 1 --group 2 --micro-batch 2 --reason-tokens 8)
else
	DRYFLAG=
	JANUS=(--arch 7b --batch 16,64 --repeats 1)
	JANUS128=(--arch 7b --batch 128 --repeats 1)
	COMPILED=("${JANUS[@]}")
	FLUX=(--arch dev --size 1024 --steps 28 --sdpa cudnn)
	SFT=(--arch 1b --batch 8 --steps 5)
	GRPO=(--arch 1b --group 7 --prompts 2 --micro-batch 7 --steps 1)
fi

part ceilings 40 10 "$PY" benchmarks/gpu_ceilings.py --json "$OUT/ceilings.json" $DRYFLAG
PEAK=$(peak)
part sampler 40 10 "$PY" benchmarks/gpu_sampler.py --json "$OUT/sampler.json" $DRYFLAG
part janus 170 60 "$PY" benchmarks/bench_generation.py "${JANUS[@]}" --loops fast,modules,generate --modules-max-batch 16 \
	--kernels --no-check \
	${PEAK:+--peak-gbs "$PEAK"} --json "$OUT/janus.json"
part flux 170 60 "$PY" benchmarks/bench_flux.py "${FLUX[@]}" --json "$OUT/flux.json"
part tests 150 40 "$PY" -m pytest -v -p no:cacheprovider -m gpu --junitxml="$OUT/gpu_tests.xml" tests/test_gpu.py
part sft 50 25 "$PY" benchmarks/bench_sft.py "${SFT[@]}"
part grpo 80 45 "$PY" benchmarks/bench_grpo.py "${GRPO[@]}"
part janus128 70 45 "$PY" benchmarks/bench_generation.py "${JANUS128[@]}" --loops fast --kernels --no-check \
	${PEAK:+--peak-gbs "$PEAK"} --json "$OUT/janus128.json"
part janus_compiled 120 70 "$PY" benchmarks/bench_generation.py "${COMPILED[@]}" --loops compiled --no-check \
	${PEAK:+--peak-gbs "$PEAK"} --json "$OUT/janus_compiled.json"

echo
echo "### report ($(($(date +%s) - START))s so far)"
"$PY" benchmarks/gpu_report.py "$OUT"
if [[ $BUNDLE == 1 ]]; then
	(cd "$OUT" && find . -maxdepth 1 -type f ! -name figures.json ! -name gpu_checks.log ! -name parts.tar.gz -printf '%P\n' |
		tar czf parts.tar.gz -T - --remove-files)
fi
echo "gpu_checks: done in $(($(date +%s) - START))s; figures in $OUT/figures.json"
