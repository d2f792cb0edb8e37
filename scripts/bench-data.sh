#!/usr/bin/env bash
# Data-loading benchmark, side by side, for docs/benchmarks.md:
#   `unclip bench data` (our Rust loader) vs tests/reference/bench_peer_data.py
#   (webdataset + PIL + torchvision + torch DataLoader) on the very same shards.
#
# Steps: (1) cargo build --release -p unclip-cli, (2) make the benchmark shards (4000 images,
# 256x256 JPEG q95 4:2:0, 500 per shard; the train split is read): photo-like images from
# tests/reference/make_photo_shards.py (--data photos, the default) or the flat shapes world
# from `unclip data synth` (--data shapes, cheap to decode),
# (3) run both loaders with the same image size, batch size and worker count, each printing one
# JSON line, (4) print the ratio of their throughputs.
#
# Usage: scripts/bench-data.sh [--python PY] [--dir DIR] [--workers N] [--runs N] [--skip-build]
#   --python PY    Python with torch, torchvision, webdataset, pillow (default: ${PYTHON:-python3})
#   --dir DIR      where the shards go (default: a temp dir, removed at exit); an existing
#                  DIR/train/ with .tar files is reused as is
#   --data KIND    photos (default) or shapes
#   --workers N    decode workers for both sides (default 2)
#   --runs N       run each side N times, alternating; the ratio uses each side's best run (default 1)
#   --skip-build   use the existing target/release/unclip
# Environment: PYTHON (default for --python), UNCLIP_BIN (a prebuilt unclip binary; no build).
set -euo pipefail

PY="${PYTHON:-python3}"
DIR=""
WORKERS=2
RUNS=1
BUILD=1
IMAGE_SIZE=64
BATCH_SIZE=32
COUNT=4000
DATA=photos

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --python) PY="$2"; shift 2 ;;
        --python=*) PY="${1#*=}"; shift ;;
        --dir) DIR="$2"; shift 2 ;;
        --dir=*) DIR="${1#*=}"; shift ;;
        --data) DATA="$2"; shift 2 ;;
        --data=*) DATA="${1#*=}"; shift ;;
        --workers) WORKERS="$2"; shift 2 ;;
        --workers=*) WORKERS="${1#*=}"; shift ;;
        --runs) RUNS="$2"; shift 2 ;;
        --runs=*) RUNS="${1#*=}"; shift ;;
        --skip-build) BUILD=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench-data.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

case "$DATA" in
    photos | shapes) ;;
    *) echo "bench-data.sh: --data must be photos or shapes, got: $DATA" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
UNCLIP="${UNCLIP_BIN:-$ROOT/target/release/unclip}" # UNCLIP_BIN: another binary (implies no build)
if [[ -n "${UNCLIP_BIN:-}" ]]; then BUILD=0; fi
PEER="$ROOT/tests/reference/bench_peer_data.py"

if [[ -z "$DIR" ]]; then
    DIR="$(mktemp -d "${TMPDIR:-/tmp}/unclip-bench-data.XXXXXX")"
    trap 'rm -rf "$DIR"' EXIT
fi
mkdir -p "$DIR"

# Fail early (before a long build) if the peer's Python stack is missing.
if ! "$PY" -c 'import torch, torchvision, webdataset, PIL, braceexpand, numpy' 2>/dev/null; then
    echo "bench-data.sh: $PY lacks torch / torchvision / webdataset / pillow / numpy (use --python)" >&2
    exit 1
fi

echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || echo unknown CPU)" >&2

# (1) build
if [[ "$BUILD" == 1 ]]; then
    echo "== cargo build --release -p unclip-cli" >&2
    cargo build --release -p unclip-cli >&2
fi
[[ -x "$UNCLIP" ]] || { echo "bench-data.sh: $UNCLIP not found (build it or drop --skip-build)" >&2; exit 1; }

# (2) shards
SHARDS="$DIR/train"
if compgen -G "$SHARDS/*.tar" >/dev/null; then
    echo "== reusing shards in $SHARDS" >&2
elif [[ "$DATA" == photos ]]; then
    echo "== make_photo_shards.py -> $DIR" >&2
    "$PY" "$ROOT/tests/reference/make_photo_shards.py" --out "$DIR" --count "$COUNT" --size 256 \
        --quality 95 --per-shard 500 --seed 0 >&2
else
    echo "== unclip data synth -> $DIR" >&2
    "$UNCLIP" data synth --out "$DIR" --count "$COUNT" --size 256 --format jpg --quality 95 \
        --samples-per-shard 500 --seed 0 >&2
fi
compgen -G "$SHARDS/*.tar" >/dev/null || { echo "bench-data.sh: no shards in $SHARDS" >&2; exit 1; }
echo "== shards: $(ls "$SHARDS"/*.tar | wc -l) files, $(du -chL "$SHARDS"/*.tar | tail -n 1 | cut -f1)" >&2
cat "$SHARDS"/*.tar >/dev/null # both sides read from a warm page cache

# The last stdout line of a command that looks like a JSON object (empty when there is none).
json_line() {
    local out
    out="$("$@")" || { echo "bench-data.sh: failed: $*" >&2; return 1; }
    printf '%s\n' "$out" | grep '^{' | tail -n 1 || true
}

# (3) run both, alternating when --runs > 1
OURS=()
PEERS=()
for ((i = 1; i <= RUNS; i++)); do
    echo "== run $i/$RUNS: unclip bench data" >&2
    line="$(json_line "$UNCLIP" bench data --shards "$SHARDS" --image-size "$IMAGE_SIZE" \
        --batch-size "$BATCH_SIZE" --workers "$WORKERS")" || exit 1
    [[ -n "$line" ]] || { echo "bench-data.sh: unclip bench data printed no JSON line" >&2; exit 1; }
    echo "$line"
    OURS+=("$line")

    echo "== run $i/$RUNS: bench_peer_data.py" >&2
    line="$(json_line "$PY" "$PEER" --shards "$SHARDS" --image-size "$IMAGE_SIZE" \
        --batch-size "$BATCH_SIZE" --workers "$WORKERS")" || exit 1
    [[ -n "$line" ]] || { echo "bench-data.sh: bench_peer_data.py printed no JSON line" >&2; exit 1; }
    echo "$line"
    PEERS+=("$line")
done

# (4) ratio (best run of each side)
"$PY" - "${#OURS[@]}" "${OURS[@]}" "${PEERS[@]}" "$DATA" <<'EOF'
import json, sys

n = int(sys.argv[1])
ours = [json.loads(s) for s in sys.argv[2 : 2 + n]]
peer = [json.loads(s) for s in sys.argv[2 + n : -1]]


def best(runs, field):
    vals = [r[field] for r in runs if isinstance(r.get(field), (int, float))]
    return max(vals) if vals else None


summary = {"bench": "data", "data": sys.argv[-1], "runs": n}
for field in ("images_per_s", "images_per_s_after_first_batch"):
    o, p = best(ours, field), best(peer, field)
    summary[f"unclip_{field}"] = o
    summary[f"peer_{field}"] = p
    summary[f"ratio_{field}"] = round(o / p, 2) if o and p else None
if ours[0].get("images") != peer[0].get("images"):
    summary["warning"] = f"image counts differ: unclip {ours[0].get('images')}, peer {peer[0].get('images')}"
ratio = summary["ratio_images_per_s"]
print(json.dumps(summary))
if ratio is not None:
    print(f"unclip / peer throughput: {ratio:.2f}x", file=sys.stderr)
EOF
