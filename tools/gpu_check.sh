#!/usr/bin/env bash
# The GPU path in one run, for the day a GPU is lent (issue 21): pretrained EfficientNet-Lite0 and EfficientNetB0 at
# 224 px with mixed precision, `carlib bench feed` for EfficientNetB0, and a 2-trial Ray sweep with one GPU per trial.
# Prints one table (and writes it, with every log, into the output folder).
#
#   tools/gpu_check.sh [OUT]          on a machine with an NVIDIA GPU (fails at once without one)
#   tools/gpu_check.sh --cpu [OUT]    the same steps, tiny, on a CPU: what the tests run, so the script cannot rot
#
# OUT defaults to build/gpu_check. PYTHON (default: .venv/bin/python, else python3) runs carlib; DATA_DIR (default:
# the embedded dataset) is the data. EfficientNetB0 uses ImageNet weights when Keras' file is cached
# (`carlib weights add efficientnetb0_notop.h5`), else random ones: the figures are speeds, not accuracies.
set -euo pipefail

mode=gpu
if [[ "${1:-}" == "--cpu" ]]; then mode=cpu; shift; fi
out="${1:-build/gpu_check}"
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$here/.venv/bin/python" ]]; then python="$here/.venv/bin/python"; else python="$(command -v python3)"; fi
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}" NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1

if [[ "$mode" == gpu ]]; then
  if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: error: no NVIDIA GPU here (nvidia-smi finds none); run 'tools/gpu_check.sh --cpu' for the tiny CPU mode" >&2
    exit 2
  fi
  size=224; epochs=3; head=1; precision=on; gpus_per_trial=1; feed_size=224; feed_rounds=3; limit=""
else
  size=32; epochs=2; head=1; precision=off; gpus_per_trial=0; feed_size=32; feed_rounds=1; limit="--limit 40"
fi

mkdir -p "$out"
out="$(cd "$out" && pwd)"
results="$out/results"
data_args=()
if [[ -n "${DATA_DIR:-}" ]]; then data_args=(--data-dir "$DATA_DIR"); fi
status=0

step() {  # step NAME COMMAND...: run it, keep its log, remember a failure and go on to the next step
  local name="$1"; shift
  echo "gpu_check: $name" >&2
  if "$@" >"$out/$name.log" 2>&1; then echo ok >"$out/$name.status"; else
    echo "failed (exit $?): see $out/$name.log" >"$out/$name.status"; status=1; fi
}

b0_weights=None
if "$python" -c "from carlib.models.registry import get_backbone; get_backbone('efficientnet_b0').fetch_imagenet()" \
    >/dev/null 2>&1; then b0_weights=imagenet; fi

common=(--image-size "$size" --epochs "$epochs" --mixed-precision "$precision" --results-dir "$results"
        --tta-passes 0 "${data_args[@]}")
step lite0 "$python" -m carlib run --study gpu_check --backbone efficientnet_lite0 --finetune two_stage \
  --head-epochs "$head" "${common[@]}"
step b0 "$python" -m carlib run --study gpu_check --backbone efficientnet_b0 --weights "$b0_weights" "${common[@]}"
# shellcheck disable=SC2086  # $limit is empty or two words
step feed "$python" -m carlib bench feed --json --feed-backbone efficientnet_b0 --image-size "$feed_size" \
  --rounds "$feed_rounds" $limit "${data_args[@]}"

cat >"$out/sweep.yaml" <<EOF
description: gpu_check - two Ray trials, $gpus_per_trial GPU each
notebook: $here/notebooks/backbone_study.ipynb
study: backbone_study   # a known study: the notebook's summary needs its spec
base: {backbone: efficientnet_lite0, image_size: $size, epochs: $epochs, finetune: two_stage, head_epochs: $head,
       mixed_precision: $precision}
grid: {lr: [1.0e-3, 3.0e-4]}
seeds: 1
EOF
if [[ -n "${DATA_DIR:-}" ]]; then sed -i "s|^base: {|base: {data_dir: $DATA_DIR, |" "$out/sweep.yaml"; fi
step ray "$python" -m carlib sweep "$out/sweep.yaml" --engine ray --gpus-per-trial "$gpus_per_trial" \
  --results-dir "$results" --no-progress

"$python" - "$out" "$results" "$mode" <<'EOF' | tee "$out/table.txt"
"""One table of the steps: what ran where, at what size and precision, how fast, and whether it worked."""
import json
import sys
from pathlib import Path

out, results, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
records = [json.loads(p.read_text()) for p in sorted((results / "records").glob("*.json"))] \
    if (results / "records").is_dir() else []
rows = []


def status(name):
    path = out / f"{name}.status"
    return path.read_text().strip() if path.is_file() else "not run"


def run_row(step, record):
    config, metrics, timings = record["config"], record.get("metrics", {}), record.get("timings", {})
    rate = metrics.get("train_images_per_s")
    rows.append((step, f"{config['backbone']} ({config['weights'] or 'random'})", config["image_size"],
                 record.get("training", {}).get("precision_policy", "?"), "train img/s",
                 f"{rate:.1f}" if rate else "-", f"{timings.get('epoch_s') or 0:.1f}",
                 ", ".join(record.get("hardware", {}).get("gpus", []) or ["cpu"]),
                 record["status"] if record["status"] == "ok" else record.get("error", "failed")[:60]))


for step, backbone, study in (("lite0", "efficientnet_lite0", "gpu_check"), ("b0", "efficientnet_b0", "gpu_check")):
    mine = [r for r in records if r["study"] == study and r["config"]["backbone"] == backbone]
    if mine:
        run_row(step, mine[-1])
    else:
        rows.append((step, backbone, "-", "-", "-", "-", "-", "-", status(step)))
feed = [json.loads(line) for line in (out / "feed.log").read_text().splitlines() if line.startswith("{")] \
    if (out / "feed.log").is_file() else []
for figure in feed:
    rows.append(("feed", figure.get("backbone", "efficientnet_b0"), figure.get("image_size", "-"), "-",
                 figure["figure"], f"{figure['value']:.3g}", "-", figure.get("gpus") or "-", status("feed")))
if not feed:
    rows.append(("feed", "efficientnet_b0", "-", "-", "-", "-", "-", "-", status("feed")))
trials = [r for r in records if r["study"] == "backbone_study"]
for record in trials:
    run_row("ray", record)
if len(trials) < 2:
    rows.append(("ray", f"{len(trials)} of 2 trials", "-", "-", "-", "-", "-", "-", status("ray")))
header = ("step", "model", "px", "precision", "figure", "value", "epoch s", "device", "status")
widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
print(f"gpu_check ({mode} mode)")
for row in [header, *rows]:
    print("  ".join(str(value).ljust(width) for value, width in zip(row, widths)).rstrip())
EOF
exit "$status"
