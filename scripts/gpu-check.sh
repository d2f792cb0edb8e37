#!/usr/bin/env bash
# Real-GPU check of the CUDA build, for docs/benchmarks.md. Runs on a GPU machine from a folder
# holding this repository's configs/ and tests/reference/ plus a stripped CUDA binary:
#   1. sets CUDARC_CUDA_VERSION for the machine's driver (from `nvidia-smi`, e.g. 13000 for
#      CUDA 13.0) unless it is set already;
#   2. stage by stage in priority order (prior, decoder, upsampler) trains STEPS optimizer steps
#      on cuda:0 with in-memory random batches (`data.source: random`, no data files), each
#      stage under a time cap, and appends one JSON line per stage to OUT as soon as the stage
#      ends: median step time after the first WARM steps (kernel compilation and autotune),
#      peak GPU memory (nvidia-smi, sampled every 100 ms), last loss, steps done, status;
#   3. unless --no-peer: runs DALLE2-pytorch (tests/reference/bench_peer_{prior,decoder}.py
#      with --device cuda) on the same GPU at the configs/bench/ shapes, appends its lines and
#      prints our/PyTorch step-time ratios. DALLE2-pytorch and its pure-Python dependencies
#      are installed from --wheels into a venv that sees the machine's PyTorch.
# The whole script stays under 5 minutes with the default caps (3 × 60 s + 2 × 45 s).
#
# Build (on the development machine) and pack the binary; stripped it is ~65 MiB, over the
# 64 MiB that travels to the GPU machine, so it travels compressed (xz: ~11 MB, gzip: ~18 MB)
# and this script unpacks it:
#   cargo build --release -p unclip-cli --features cuda
#   mkdir -p gpu-check && strip -o gpu-check/unclip target/release/unclip
#   xz -T2 -6 gpu-check/unclip          # -> gpu-check/unclip.xz
#
# Usage: scripts/gpu-check.sh [--bin PATH] [--out FILE] [--steps N] [--warm N] [--cap S]
#                             [--python PY] [--wheels DIR] [--no-peer]
#   --bin PATH     the CUDA unclip binary, plain or .xz/.gz (default: the first of
#                  gpu-check/unclip, gpu-check/unclip.xz, gpu-check/unclip.gz, target/release/unclip)
#   --out FILE     JSON lines, one per stage (default: gpu-check.jsonl)
#   --steps N      optimizer steps per stage (default 40); --warm N untimed first (default 10)
#   --cap S        seconds per stage, compilation included (default 60)
#   --python PY    Python with torch (CUDA) (default: ${PYTHON:-python3})
#   --wheels DIR   wheels of dalle2-pytorch 1.15.6 and its pure-Python dependencies
#   --no-peer      skip DALLE2-pytorch
#   --device D     train on D instead of cuda:0 (`--device cpu --no-peer`: a dry run of the
#                  script itself on a machine without GPU)
set -uo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN=""; OUT="gpu-check.jsonl"; STEPS=40; WARM=10; CAP=60; PY="${PYTHON:-python3}"
WHEELS=""; PEER=1; DEVICE="cuda:0"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin) BIN="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --steps) STEPS="$2"; shift 2 ;;
        --warm) WARM="$2"; shift 2 ;;
        --cap) CAP="$2"; shift 2 ;;
        --python) PY="$2"; shift 2 ;;
        --wheels) WHEELS="$2"; shift 2 ;;
        --no-peer) PEER=0; shift ;;
        --device) DEVICE="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage; exit 2 ;;
    esac
done
if [[ -z "$BIN" ]]; then
    for b in "$ROOT/gpu-check/unclip" "$ROOT/gpu-check/unclip.xz" "$ROOT/gpu-check/unclip.gz" "$ROOT/target/release/unclip"; do
        if [[ -f "$b" ]]; then BIN="$b"; break; fi
    done
fi
[[ -n "$BIN" && -f "$BIN" ]] || { echo "no unclip binary found (see the build lines in --help)" >&2; exit 2; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
case "$BIN" in
    *.xz) xz -dc "$BIN" >"$WORK/unclip" && chmod +x "$WORK/unclip" && BIN="$WORK/unclip" ;;
    *.gz) gzip -dc "$BIN" >"$WORK/unclip" && chmod +x "$WORK/unclip" && BIN="$WORK/unclip" ;;
esac
[[ -x "$BIN" ]] || { echo "$BIN is not executable" >&2; exit 2; }
HAVE_SMI=0
command -v nvidia-smi >/dev/null && HAVE_SMI=1
if [[ $HAVE_SMI -eq 0 && "$DEVICE" != cpu ]]; then
    echo "nvidia-smi not found: is this a GPU machine?" >&2; exit 2
fi

if [[ $HAVE_SMI -eq 1 && -z "${CUDARC_CUDA_VERSION:-}" ]]; then
    v="$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -n 1)"
    if [[ -n "$v" ]]; then
        read -r major minor <<<"$v"
        export CUDARC_CUDA_VERSION="$((major * 1000 + minor * 10))"
    fi
fi
if [[ $HAVE_SMI -eq 1 ]]; then
    echo "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1); CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-unset}" >&2
fi
: >"$OUT"

# Peak GPU memory (MiB) while "$@" runs; the command's exit status is kept in $WORK/rc.
with_memory() {
    local log="$WORK/mem.log" smi=""
    : >"$log"
    if [[ $HAVE_SMI -eq 1 ]]; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 100 >"$log" 2>/dev/null &
        smi=$!
    fi
    "$@"
    echo $? >"$WORK/rc"
    if [[ -n "$smi" ]]; then kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null; fi
    sort -n "$log" | tail -n 1
}

stage() {
    local name="$1" config="$2"; shift 2
    local run="$WORK/$name"
    local start=$SECONDS
    local peak
    peak="$(with_memory timeout "$CAP" "$BIN" train --config "$config" --out "$run" \
        --max-steps "$STEPS" --devices "$DEVICE" \
        --set data.source=random --set logging.every_steps=1 --set logging.progress=false \
        --set checkpoint.every_steps=1000000 --set 'checkpoint.every_minutes=~' \
        --set validation.every_steps=0 --set preview.every_steps=0 "$@" \
        >"$WORK/$name.out" 2>"$WORK/$name.err")"
    local rc; rc="$(cat "$WORK/rc")"
    GPU_CHECK_DEVICE="$DEVICE" "$PY" - "$name" "$run/metrics.jsonl" "$rc" "$peak" "$((SECONDS - start))" "$WARM" "$WORK/$name.err" "$config" >>"$OUT" <<'PYEOF'
import json, re, statistics, sys
name, metrics, rc, peak, wall, warm, err, config = sys.argv[1:9]
batch = int(re.search(r"^\s*batch_size:\s*(\d+)", open(config).read(), re.M).group(1))
lines = []
try:
    lines = [json.loads(l) for l in open(metrics) if '"kind":"train"' in l]
except OSError:
    pass
# One metrics line per step: its samples_per_s is that step's batch / step time.
times = [batch / l["samples_per_s"] for l in lines if l.get("samples_per_s")]
timed = times[int(warm):] or times
status = "ok" if rc == "0" else ("time cap" if rc == "124" else f"exit {rc}")
out = {
    "check": "gpu", "stage": name, "device": __import__("os").environ.get("GPU_CHECK_DEVICE"), "status": status, "steps_done": len(lines),
    "batch": batch, "s_per_step_median": statistics.median(timed) if timed else None,
    "peak_gpu_mib": int(peak) if peak.strip().isdigit() else None,
    "last_loss": lines[-1]["loss"] if lines else None, "wall_s": int(wall),
}
if rc != "0":
    out["stderr_tail"] = open(err, errors="replace").read()[-600:]
print(json.dumps(out))
PYEOF
    tail -n 1 "$OUT" >&2
}

stage prior "$ROOT/configs/bench/prior.yaml"
stage decoder "$ROOT/configs/bench/decoder.yaml"
stage upsampler "$ROOT/configs/test/upsampler.yaml"

if [[ $PEER -eq 1 ]]; then
    if ! "$PY" -c "import dalle2_pytorch" 2>/dev/null; then
        if [[ -n "$WHEELS" ]]; then
            "$PY" -m venv --system-site-packages "$WORK/venv" &&
                "$WORK/venv/bin/pip" install -q --no-index --find-links "$WHEELS" dalle2-pytorch==1.15.6 &&
                PY="$WORK/venv/bin/python"
        else
            echo "dalle2_pytorch is not importable and no --wheels given: skipping the peer" >&2
            PEER=0
        fi
    fi
fi
if [[ $PEER -eq 1 ]]; then
    for s in prior decoder; do
        line="$(timeout "$((CAP < 45 ? CAP : 45))" "$PY" "$ROOT/tests/reference/bench_peer_$s.py" --device cuda --warmup 3 --steps 10 2>"$WORK/peer-$s.err" | tail -n 1)"
        if [[ -n "$line" ]]; then echo "$line" | tee -a "$OUT" >&2; else tail -n 5 "$WORK/peer-$s.err" >&2; fi
    done
    # Ratios of our median step time to the peer's s_per_step, at the same shapes.
    "$PY" - "$OUT" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ours = {r["stage"]: r for r in rows if r.get("check") == "gpu"}
peer = {r["stage"]: r for r in rows if r.get("peer") == "dalle2-pytorch"}
for s in ("prior", "decoder"):
    o, p = ours.get(s, {}), peer.get(s)
    if p and o.get("s_per_step_median"):
        step = o["s_per_step_median"]
        print(json.dumps({"stage": s, "ours_s_per_step": round(step, 5),
                          "peer_s_per_step": p["s_per_step"],
                          "ratio_ours_over_peer": round(step / p["s_per_step"], 3)}))
PYEOF
fi
echo "wrote $OUT" >&2
