#!/usr/bin/env bash
# Training-step benchmark of one stage, side by side, for docs/benchmarks.md:
#   `unclip bench train --config configs/bench/STAGE.yaml` (random in-memory batches) vs
#   tests/reference/bench_peer_STAGE.py (DALLE2-pytorch on torch CPU, fed random tensors of the
#   same shapes), one after the other in the same run, each printing one JSON line; then the
#   ratio of step times (ours / peer) and of parameter counts.
#
# Usage: scripts/bench-train.sh STAGE [--python PY] [--steps N] [--warmup N] [--threads N] [--skip-build]
#   STAGE          prior or decoder
#   --python PY    Python with torch and dalle2-pytorch 1.15.6 (install commands in the peer
#                  script's docstring; default: ${PYTHON:-python3})
#   --steps N      timed steps on each side (default 5); --warmup N untimed first (default 2)
#   --threads N    torch threads of the peer (default 2, the cores of the development machine)
#   --skip-build   use the existing target/release/unclip
# Environment: PYTHON (default for --python), UNCLIP_BIN (a prebuilt unclip binary; no build).
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
[[ $# -ge 1 ]] || { usage; exit 2; }
STAGE="$1"; shift
PY="${PYTHON:-python3}"; STEPS=5; WARMUP=2; THREADS=2; BUILD=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --python) PY="$2"; shift 2 ;;
        --steps) STEPS="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --skip-build) BUILD=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage; exit 2 ;;
    esac
done
case "$STAGE" in prior|decoder) ;; *) echo "STAGE must be prior or decoder" >&2; exit 2 ;; esac

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${UNCLIP_BIN:-$ROOT/target/release/unclip}"
if [[ -z "${UNCLIP_BIN:-}" && $BUILD -eq 1 ]]; then
    cargo build --release -p unclip-cli --manifest-path "$ROOT/Cargo.toml" >&2
fi

ours="$("$BIN" bench train --config "$ROOT/configs/bench/$STAGE.yaml" --steps "$STEPS" --warmup "$WARMUP" | tail -n 1)"
echo "$ours"
peer="$("$PY" "$ROOT/tests/reference/bench_peer_$STAGE.py" --threads "$THREADS" --warmup "$WARMUP" --steps "$STEPS" | tail -n 1)"
echo "$peer"
"$PY" - "$ours" "$peer" <<'PYEOF'
import json, sys
ours, peer = (json.loads(a) for a in sys.argv[1:3])
print(json.dumps({
    "ratio_s_per_step": round(ours["s_per_step"] / peer["s_per_step"], 3),
    "ratio_params": round(ours["params"] / peer["params"], 3),
}))
PYEOF
