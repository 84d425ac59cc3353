"""Peak memory of `tf-migrate convert` on a synthetic sharded checkpoint (not part of the tests).

Builds a minGPT-shaped sharded safetensors checkpoint of --gib GiB (separate query/key/value
Linears per layer, so every layer has a fused group), converts it with a TFM102 plan in a child
process, and reports the child's peak RSS against the checkpoint size, the largest shard, and
the RSS of a process that only imports torch and safetensors.

    .venv/bin/python benchmarks/convert_memory.py --gib 2.2 --shards 8 --dim 2048
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_PLAN = {"version": 1, "classes": [{
    "file": "synthetic.py", "class": "CausalSelfAttention", "rules": ["TFM102"], "renamed": {},
    "concatenated": [
        {"target": f"qkv.{p}", "sources": [f"query.{p}", f"key.{p}", f"value.{p}"], "dim": 0}
        for p in ("weight", "bias")],
    "dropped": [], "new": []}]}


def _layer(i: int, d: int) -> dict:
    import torch

    keys = {f"blocks.{i}.attn.{n}.weight": (d, d) for n in ("query", "key", "value", "proj")}
    keys.update({f"blocks.{i}.attn.{n}.bias": (d,) for n in ("query", "key", "value", "proj")})
    keys.update({f"blocks.{i}.mlp.c_fc.weight": (4 * d, d), f"blocks.{i}.mlp.c_proj.weight": (d, 4 * d)})
    return {k: torch.randn(shape) for k, shape in keys.items()}


def make_checkpoint(folder: Path, gib: float, shards: int, d: int) -> int:
    """Write layers until the size is reached; keys dealt round-robin so groups span shards."""
    from safetensors.torch import save_file

    per_layer = (4 * d * d + 4 * d + 8 * d * d) * 4
    layers = max(1, round(gib * 2**30 / per_layer))
    names = [f"model-{s + 1:05d}-of-{shards:05d}.safetensors" for s in range(shards)]
    weight_map: dict[str, str] = {}
    for s, name in enumerate(names):  # one shard in memory at a time while writing, too
        part = {}
        for i in range(layers):
            for j, (key, tensor) in enumerate(_layer(i, d).items()):
                if (i * 10 + j) % shards == s:
                    part[key] = tensor
                    weight_map[key] = name
        save_file(part, str(folder / name))
        del part
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return sum((folder / n).stat().st_size for n in names)


def _child_peak(code: str) -> float:
    """Peak RSS (GiB) of a fresh interpreter running `code`, as the child itself reports it."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec from this (large) parent.
    report = ("import atexit, sys; atexit.register(lambda: print('PEAK_KIB', next(l.split()[1] for l in "
              "open('/proc/self/status') if l.startswith('VmHWM')), file=sys.stderr)); ")
    done = subprocess.run([sys.executable, "-c", report + code], stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    peak = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("PEAK_KIB")]
    return int(peak[-1]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.2)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        size = make_checkpoint(root / "in", args.gib, args.shards, args.dim)
        largest = max(p.stat().st_size for p in (root / "in").glob("*.safetensors"))
        (root / "plan.json").write_text(json.dumps(_PLAN))
        baseline = _child_peak("import torch, safetensors.torch")
        started = time.perf_counter()
        peak = _child_peak(
            "import sys; from tf_migrate.cli import main; sys.argv = ['tf-migrate', 'convert', "
            f"{str(root / 'in' / 'model.safetensors.index.json')!r}, {str(root / 'out')!r}, "
            f"'--plan', {str(root / 'plan.json')!r}]; main()")
        seconds = time.perf_counter() - started
        group = 6 * args.dim * args.dim * 4 / 2**30  # three sources and their concatenation
        print(f"checkpoint {size / 2**30:.2f} GiB in {args.shards} shards, largest shard "
              f"{largest / 2**30:.3f} GiB, one fused group {group:.3f} GiB")
        print(f"peak RSS of convert: {peak:.3f} GiB ({100 * peak / (size / 2**30):.0f}% of the checkpoint); "
              f"import-only baseline {baseline:.3f} GiB; above baseline {peak - baseline:.3f} GiB; "
              f"{seconds:.1f} s")


if __name__ == "__main__":
    main()
