"""Legacy fixture models vs their tf-migrate output: time and peak memory against sequence length.

Each model in fixtures/models is migrated with the exact rules and, separately, with all rules
(`--select all`; those add retrain/compatible changes such as pre-norm and SwiGLU, so their figures
say what the architecture change costs, not what a rewrite of the same function buys). The einsum
GPT is also compared with a hand-written modern version (fixtures/models/reference/). Models are
built larger than in the manifest so that attention dominates at long lengths; batch 1, eval mode,
float32. Writes runtime.md, runtime.json and runtime.png to --out (not part of the test suite):

    .venv/bin/python benchmarks/runtime.py               # about 15 minutes on 2 shared cores
    .venv/bin/python benchmarks/runtime.py --models einsum_gpt --lengths 128,512 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "fixtures" / "models"
REFERENCE = MODELS / "reference" / "einsum_gpt_modern.py"
LONG = (128, 512, 1024, 2048, 4096)
SHORT = (128, 512, 1024)
_ENCDEC = "(lambda s, t: (s, t, *make_masks(s, t, pad=0)))(torch.randint(1, 1000, (B, T)), torch.randint(1, 1000, (B, T)))"
# stem -> (build, lengths, inputs expression or None for token ids)
CONFIGS = {
    "einsum_gpt": ("EinsumGPT(vocab_size=1000, d_model=256, n_heads=4, n_layers=2, d_ff=1024, max_len=4096)",
                   LONG, None),
    "mingpt_style": ("GPT(vocab_size=1000, block_size=1024, n_layer=2, n_head=4, n_embd=256)", SHORT, None),
    "bert_style": (("BertModel(BertConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=2, num_attention_heads=4, "
                    "intermediate_size=1024, max_position_embeddings=1024))"), SHORT, None),
    "kv_cache_gpt": ("CachedGPT(vocab_size=1000, block_size=1024, n_layer=2, n_head=4, n_embd=256)", SHORT, None),
    "annotated_encdec": ("make_model(src_vocab=1000, tgt_vocab=1000, N=2, d_model=256, d_ff=1024, h=4)",
                         SHORT, _ENCDEC),
    "torch_builtin": ("TransformerModel(ntoken=1000, d_model=256, nhead=4, d_hid=1024, nlayers=2)", SHORT,
                      "torch.randint(0, 1000, (B, T))"),  # its first Linear is inside the encoder, not the input
    "aliased_bmm": (("TransformerEncoder(num_embeddings=1000, embed_dim=256, num_heads=4, ffn_embed_dim=1024, "
                     "num_layers=2, padding_idx=1)"), SHORT, "torch.randint(2, 1000, (B, T))"),
    "relpos_look_alike": ("RelPosEncoder(n_token=1000, n_layer=2, n_head=4, d_model=256, d_head=64, d_inner=1024)",
                          SHORT, None),
}


def migrate(stem: str, select: str, out: Path) -> Path | None:
    """The tool's output for one fixture, or None when the rules changed nothing."""
    source = MODELS / f"{stem}.py"
    subprocess.run([sys.executable, "-m", "tf_migrate", str(source), "--select", select, "--output-dir", str(out)],
                   check=False, capture_output=True)
    target = out / source.name
    return target if target.exists() and target.read_text() != source.read_text() else None


def specs_for(stem: str, tmp: Path, notes: list[str]) -> list:
    from tf_migrate.bench.setup import ModelSpec, load

    build, _, inputs = CONFIGS[stem]
    specs = [ModelSpec("legacy", str(MODELS / f"{stem}.py"), build, inputs=inputs)]
    for select in ("exact", "all"):
        path = migrate(stem, select, tmp / select)
        if path is None:
            notes.append(f"{stem}: `--select {select}` changes nothing (refusals or no pattern)")
            continue
        spec = ModelSpec(select, str(path), build, inputs=inputs)
        try:
            load(spec)
        except Exception as exc:  # noqa: BLE001 - reported, not hidden: the migrated model must build
            notes.append(f"{stem}: the `--select {select}` output does not build: {exc}")
            continue
        specs.append(spec)
    if stem == "einsum_gpt":
        specs.append(ModelSpec("reference", str(REFERENCE), build.replace("EinsumGPT", "ModernGPT"), inputs=inputs))
    return specs


def run(stems: list[str], lengths: list[int] | None, repeats: int, tmp: Path) -> tuple[dict, list[str]]:
    from tf_migrate.bench import BenchOptions, measure

    results, notes = {}, []
    for stem in stems:
        specs = specs_for(stem, tmp, notes)
        chosen = [t for t in CONFIGS[stem][1] if lengths is None or t in lengths]
        started = time.time()
        results[stem] = measure(specs, BenchOptions(chosen, warmup=1, repeats=repeats))
        print(f"{stem}: {len(specs)} models, lengths {chosen}, {time.time() - started:.0f}s", file=sys.stderr)
    return results, notes


def markdown(results: dict, notes: list[str], repeats: int) -> str:
    import torch
    from tf_migrate.bench.report import ratio_table

    lines = ["# Legacy vs migrated: time and peak memory", "",
             (f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
             f"batch 1, float32, eval mode; median of {repeats} interleaved runs after 1 warm-up; peak = "
             "RSS high-water mark above the built model and inputs, one fresh process per cell. Absolute "
             "times depend on what else the machine runs; ratios less so (the models take turns within "
             "each round)."), ""]
    lines += [f"- {note}" for note in notes]
    for stem, measurements in results.items():
        labels = list(dict.fromkeys(m.label for m in measurements))
        pairs = [("legacy", other) for other in ("exact", "all") if other in labels]
        if "reference" in labels and "exact" in labels:
            pairs.append(("exact", "reference"))
        for base, other in pairs:
            lines += ["", f"## {stem}: {base} vs {other}", "", *ratio_table(measurements, base, other)]
    return "\n".join(lines) + "\n"


def _merge(path: Path, stems: list[str], results: dict) -> dict:
    from tf_migrate.bench import Measurement

    old = json.loads(path.read_text())
    old = old.get("results", old)  # an older file holds only the results
    kept = {stem: [Measurement(**m) for m in ms] for stem, ms in old.items() if stem not in stems}
    return {stem: kept.get(stem) or results[stem] for stem in dict.fromkeys([*old, *results])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CONFIGS))
    parser.add_argument("--lengths", default=None, help="subset of each model's lengths, e.g. 128,512")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--update", action="store_true", help="keep the other models' figures from --out/runtime.json")
    args = parser.parse_args()
    lengths = [int(t) for t in args.lengths.split(",")] if args.lengths else None
    stems = args.models.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        results, notes = run(stems, lengths, args.repeats, Path(tmp))
        if args.update:
            results = _merge(args.out / "runtime.json", stems, results)
            notes = []
            for stem in results:  # the notes of models kept from the earlier run, too
                specs_for(stem, Path(tmp) / stem, notes)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runtime.md").write_text(markdown(results, notes, args.repeats))
    (args.out / "runtime.json").write_text(json.dumps(
        {"results": {stem: [asdict(m) for m in ms] for stem, ms in results.items()}}, indent=1))
    from plot_runtime import plot

    plot(results, args.out / "runtime.png")
    print(f"wrote {args.out}/runtime.md, runtime.json, runtime.png", file=sys.stderr)


if __name__ == "__main__":
    main()
