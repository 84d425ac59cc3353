"""How far a float32-softmax attention (`softmax(s.float()).type_as(s)`) moves in float16/bfloat16
when TFM101 replaces it with F.scaled_dot_product_attention.

Builds the golden pair fixtures/sdpa/softmax_fp32_upcast.{before,after}.py with the same weights,
runs both in float64 (the reference), float32, bfloat16 and float16 on CPU, and prints the max
absolute error of each against the float64 reference and between before and after.

    python benchmarks/softmax_upcast_precision.py [--width 256] [--heads 4] [--length 256] [--seeds 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from helpers import load_module  # noqa: E402

PAIR = ROOT / "fixtures" / "sdpa" / "softmax_fp32_upcast"


def measure(width: int, heads: int, length: int, seed: int) -> dict[str, tuple[float, float, float]]:
    """dtype -> (before vs float64, after vs float64, before vs after), max abs."""
    before_cls = load_module(PAIR.with_name(PAIR.name + ".before.py")).UpcastAttention
    after_cls = load_module(PAIR.with_name(PAIR.name + ".after.py")).UpcastAttention
    torch.manual_seed(seed)
    before = before_cls(width, heads).eval()
    after = after_cls(width, heads).eval()
    after.load_state_dict(before.state_dict(), strict=True)
    x = torch.randn(2, length, width)
    with torch.no_grad():
        reference = before.double()(x.double())
        found = {}
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            b = before.to(dtype)(x.to(dtype)).double()
            a = after.to(dtype)(x.to(dtype)).double()
            found[str(dtype).removeprefix("torch.")] = (
                (b - reference).abs().max().item(), (a - reference).abs().max().item(), (a - b).abs().max().item())
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    worst: dict[str, list[float]] = {}
    for seed in range(args.seeds):
        for dtype, errors in measure(args.width, args.heads, args.length, seed).items():
            worst.setdefault(dtype, [0.0, 0.0, 0.0])
            worst[dtype] = [max(w, e) for w, e in zip(worst[dtype], errors)]
    print(f"width {args.width}, {args.heads} heads, T = {args.length}, batch 2, {args.seeds} seeds, "
          f"torch {torch.__version__} CPU; worst max |error| over seeds")
    print("| dtype | before vs float64 | after (SDPA) vs float64 | before vs after |")
    print("|---|---:|---:|---:|")
    for dtype, (b, a, d) in worst.items():
        print(f"| {dtype} | {b:.3g} | {a:.3g} | {d:.3g} |")


if __name__ == "__main__":
    main()
