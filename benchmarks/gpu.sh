#!/usr/bin/env bash
# Every GPU measurement the README quotes, in one run (about 6-8 minutes on one A100/H100-class GPU).
# Writes its tables under ${OUT:-gpu_bench}/ ; run from the repository root on a CUDA machine:
#   pip install -e ".[dev,gpu]"   (optionally also ".[cuda]" for mamba-ssm's kernel, if it builds there)
#   bash benchmarks/gpu.sh
set -euo pipefail
OUT="${OUT:-gpu_bench}"
mkdir -p "$OUT"
python -m archbench.report kernels | tee "$OUT/kernels.md"

# 1. The selective scan on CUDA: fast, triton, mamba_ssm (if it imports), mambapy's pscan; L = 257, 1025, 4097.
python -m archbench.bench scan --device cuda --timer wall --repeats 10 --skip-reference-above 0 \
  --lengths 257 1025 4097 | tee "$OUT/scan.txt"

# 2. Training throughput at 256 and 512 (32x32x4 and 64x64x4 latents), bf16, batch 32, interleaved.
for size in 32 64; do
  python -m archbench.bench step backbones=dis_s2,dis_b2,dit_s2,dit_b2,uvit_s2 device=cuda precision=bf16 \
    batch=32 image_size="$size" in_channels=4 num_classes=1000 steps=5 warmup=3 rounds=2 timer=wall \
    out="$OUT/step_$((size * 8)).json" | tee "$OUT/step_$((size * 8)).txt"
done

# 3. Where DiS's time crosses attention's: per-image forward time over token counts (scaling.csv + plot).
python -m archbench.report scaling backbones=dis_s2,dit_s2 resolutions=16,32,64,96,128 device=cuda \
  batch=8 out="$OUT/scaling" | tee "$OUT/scaling.txt"
echo "tables in $OUT/"
