"""`tf-migrate convert`: every format, every legacy model with key changes, and every bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from convert_support import (MODELS, build, convert, inputs, load_module, manifest, migrate,  # noqa: E402
                             outputs_close, save_sharded)

# Legacy models whose TFM101+TFM102 plan changes checkpoint keys (einsum_gpt: raw weights, cat along dim 1).
KEYED = ["mingpt_style", "bert_style", "einsum_gpt"]


def _old_model(stem: str):
    entry = manifest()[stem]
    module = load_module(MODELS / f"{stem}.py")
    torch.manual_seed(0)
    return module, build(module, entry["build"]).eval()


def _write(fmt: str, state: dict, folder: Path) -> Path:
    if fmt == "pt":
        torch.save(state, folder / "old.pt")
        return folder / "old.pt"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous().clone() for k, v in state.items()}, str(folder / "old.safetensors"))
        return folder / "old.safetensors"
    return save_sharded(state, folder / "old_sharded")


def _read(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.is_dir():
        from safetensors.torch import load_file

        index = json.loads((path / "model.safetensors.index.json").read_text())
        state = {}
        for name in sorted(set(index["weight_map"].values())):
            state.update(load_file(str(path / name)))
        assert set(state) == set(index["weight_map"])
        return state
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("fmt", ["pt", "safetensors", "sharded"])
@pytest.mark.parametrize("stem", KEYED)
def test_old_checkpoint_converts_and_matches(stem: str, fmt: str, tmp_path: Path) -> None:
    entry = manifest()[stem]
    module, old = _old_model(stem)
    after, plan = migrate(stem, tmp_path)
    source = _write(fmt, old.state_dict(), tmp_path)
    out = tmp_path / {"pt": "new.pt", "safetensors": "new.safetensors", "sharded": "new_sharded"}[fmt]
    result = convert(source, out, "--plan", plan, "--check-build", entry["build"], "--source", after)
    assert result.exit_code == 0, result.output
    assert any(f"converted {path}" in result.output
               for path in ("blocks.0.attn", "encoder.layer.0", "layers.0.attn")), result.output
    assert "loads strictly" in result.output
    new = build(load_module(after), entry["build"]).eval()
    new.load_state_dict(_read(out), strict=True)
    torch.manual_seed(1)
    with torch.no_grad():
        for args in inputs(module, entry["inputs"]):
            assert outputs_close(old(*args), new(*args))


@pytest.mark.parametrize("stem", ["kv_cache_gpt"])
def test_plan_without_key_changes_is_said_and_old_checkpoint_loads(stem: str, tmp_path: Path) -> None:
    entry = manifest()[stem]
    _, old = _old_model(stem)
    after, plan = migrate(stem, tmp_path)
    torch.save(old.state_dict(), tmp_path / "old.pt")
    result = convert(tmp_path / "old.pt", tmp_path / "new.pt", "--plan", plan)
    assert result.exit_code == 2 and "changes no checkpoint key" in result.output
    build(load_module(after), entry["build"]).load_state_dict(old.state_dict(), strict=True)


def test_sharded_layout_is_kept(tmp_path: Path) -> None:
    _, old = _old_model("mingpt_style")
    _, plan = migrate("mingpt_style", tmp_path)
    index = save_sharded(old.state_dict(), tmp_path / "in", shards=3)
    assert convert(index, tmp_path / "out", "--plan", plan).exit_code == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "in").iterdir())
    weight_map = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())["weight_map"]
    assert "blocks.1.attn.qkv.weight" in weight_map and "blocks.1.attn.query.weight" not in weight_map


def test_wrapped_checkpoint_converts_model_and_reports_the_rest(tmp_path: Path) -> None:
    _, old = _old_model("mingpt_style")
    after, plan = migrate("mingpt_style", tmp_path)
    torch.save({"model": old.state_dict(), "optimizer": {"state": {}}, "epoch": 3}, tmp_path / "ckpt.pt")
    result = convert(tmp_path / "ckpt.pt", tmp_path / "new.pt", "--plan", plan)
    assert result.exit_code == 0, result.output
    assert "left out" in result.output and "optimizer, epoch" in result.output
    written = torch.load(tmp_path / "new.pt", weights_only=True)
    assert list(written) == ["model"] and "blocks.0.attn.qkv.weight" in written["model"]


def test_report_lists_untouched_keys(tmp_path: Path) -> None:
    _, old = _old_model("mingpt_style")
    _, plan = migrate("mingpt_style", tmp_path)
    torch.save(old.state_dict(), tmp_path / "old.pt")
    result = convert(tmp_path / "old.pt", tmp_path / "new.pt", "--plan", plan)
    assert "untouched: 25 key(s)" in result.output and "blocks.*.mlp.c_fc.weight (x2)" in result.output
    assert "converted blocks.1.attn [CausalSelfAttention]" in result.output


# --- bad input: exit 2, a clear message naming the key or file, nothing written -------------------

@pytest.fixture()
def mingpt(tmp_path: Path):
    _, old = _old_model("mingpt_style")
    after, plan = migrate("mingpt_style", tmp_path)
    torch.save(old.state_dict(), tmp_path / "old.pt")
    return tmp_path, old.state_dict(), plan


def _fails(tmp_path: Path, args: list, *words: str) -> None:
    before = sorted(os.listdir(tmp_path))
    result = convert(*args)
    assert result.exit_code == 2, result.output
    assert all(w in result.output for w in words), result.output
    assert sorted(os.listdir(tmp_path)) == before  # nothing written, no staging left behind


def test_keys_matching_no_class(mingpt) -> None:
    tmp_path, _, plan = mingpt
    _, other = _old_model("torch_builtin")  # built-in layers: no query/key/value keys anywhere
    torch.save(other.state_dict(), tmp_path / "other.pt")
    _fails(tmp_path, [tmp_path / "other.pt", tmp_path / "new.pt", "--plan", plan],
           "no key of the checkpoint matches", "CausalSelfAttention")


def test_shape_mismatch_names_the_key(mingpt) -> None:
    tmp_path, state, plan = mingpt
    state["blocks.1.attn.key.weight"] = torch.zeros(64, 32)
    torch.save(state, tmp_path / "bad.pt")
    _fails(tmp_path, [tmp_path / "bad.pt", tmp_path / "new.pt", "--plan", plan],
           "shape mismatch", "blocks.1.attn.key.weight")


def test_truncated_files(mingpt) -> None:
    tmp_path, state, plan = mingpt
    data = (tmp_path / "old.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    _fails(tmp_path, [tmp_path / "cut.pt", tmp_path / "new.pt", "--plan", plan], "cut.pt", "truncated")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "full.safetensors"))
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    _fails(tmp_path, [tmp_path / "cut.safetensors", tmp_path / "new.safetensors", "--plan", plan],
           "cut.safetensors", "truncated")


def test_not_a_checkpoint(mingpt) -> None:
    tmp_path, _, plan = mingpt
    (tmp_path / "notes.bin").write_text("these are my notes, not weights\n")
    _fails(tmp_path, [tmp_path / "notes.bin", tmp_path / "new.pt", "--plan", plan], "notes.bin")
    _fails(tmp_path, [tmp_path / "old.pt", tmp_path / "new.pt", "--plan", tmp_path / "old.pt"],
           "not a tf-migrate plan")


class Config:  # a pickled object that weights_only loading must refuse
    depth = 2


def test_pickle_needing_unsafe_loading(mingpt) -> None:
    tmp_path, state, plan = mingpt
    torch.save({"model": state, "config": Config()}, tmp_path / "objects.pt")
    _fails(tmp_path, [tmp_path / "objects.pt", tmp_path / "new.pt", "--plan", plan],
           "objects.pt", "--unsafe-pickle")
    result = convert(tmp_path / "objects.pt", tmp_path / "new.pt", "--plan", plan, "--unsafe-pickle")
    assert result.exit_code == 0 and "warning" in result.output and "config" in result.output


def test_never_overwrites(mingpt) -> None:
    tmp_path, _, plan = mingpt
    _fails(tmp_path, [tmp_path / "old.pt", tmp_path / "old.pt", "--plan", plan, "--force"], "overwrite the input")
    (tmp_path / "new.pt").write_text("keep me")
    _fails(tmp_path, [tmp_path / "old.pt", tmp_path / "new.pt", "--plan", plan], "exists", "--force")
    assert (tmp_path / "new.pt").read_text() == "keep me"
    assert convert(tmp_path / "old.pt", tmp_path / "new.pt", "--plan", plan, "--force").exit_code == 0
    assert "blocks.0.attn.qkv.weight" in torch.load(tmp_path / "new.pt", weights_only=True)


def test_failed_strict_load_writes_nothing(mingpt) -> None:
    tmp_path, _, plan = mingpt
    _fails(tmp_path, [tmp_path / "old.pt", tmp_path / "new.pt", "--plan", plan, "--check-build",
                      "GPT(vocab_size=100, block_size=32)", "--source", MODELS / "mingpt_style.py"],
           "does not load strictly", "qkv")


def test_plan_known_only_by_a_bias_buffer_needs_the_model(tmp_path: Path) -> None:
    """TFM101 alone drops minGPT's `bias` mask buffer: every Linear has a `bias` key too."""
    entry = manifest()["mingpt_style"]
    _, old = _old_model("mingpt_style")
    after, plan = migrate("mingpt_style", tmp_path, select="TFM101")
    torch.save(old.state_dict(), tmp_path / "old.pt")
    _fails(tmp_path, [tmp_path / "old.pt", tmp_path / "new.pt", "--plan", plan], "--check-build")
    result = convert(tmp_path / "old.pt", tmp_path / "new.pt", "--plan", plan,
                     "--check-build", entry["build"], "--source", after)
    assert result.exit_code == 0, result.output
    assert result.output.count("converted ") == 2 and "dropped bias" in result.output
    written = torch.load(tmp_path / "new.pt", weights_only=True)
    assert "blocks.0.attn.bias" not in written and "blocks.0.ln_1.bias" in written


@pytest.mark.parametrize("stem", KEYED)
def test_in_memory_conversion_matches_outputs(stem: str, tmp_path: Path) -> None:
    from tf_migrate.convert.state_dict import convert_state_dict
    from tf_migrate.engine.file import migrate_source
    from tf_migrate.engine.registry import select_rules

    entry = manifest()[stem]
    module, old = _old_model(stem)
    exact = [rule() for rule in select_rules(["exact"])]
    result = migrate_source((MODELS / f"{stem}.py").read_text(), f"{stem}.py", exact)
    (tmp_path / "after.py").write_text(result.migrated)
    new = build(load_module(tmp_path / "after.py"), entry["build"]).eval()
    state, keymap = convert_state_dict(old.state_dict(), result.plans)
    new.load_state_dict(state, strict=True)
    assert len(keymap.instances) == 2
    with torch.no_grad():
        for args in inputs(module, entry["inputs"]):
            assert outputs_close(old(*args), new(*args))


def test_concatenation_along_dim_1() -> None:
    """Raw (in, out) weights stack along their output dimension, 1: shapes say which dim was used."""
    from tf_migrate.convert.state_dict import convert_state_dict
    from tf_migrate.plan import ClassPlan, Concatenation

    plan = ClassPlan("m.py", "Attn", ["TFM102"])
    plan.concatenated.append(Concatenation("w_qkv", ["w_q", "w_k", "w_v"], 1))
    state = {f"layers.{i}.attn.w_{r}": torch.randn(4, n) for i in range(2) for r, n in zip("qkv", (6, 2, 2))}
    converted, keymap = convert_state_dict(state, [plan])
    assert sorted(converted) == ["layers.0.attn.w_qkv", "layers.1.attn.w_qkv"] and len(keymap.instances) == 2
    fused = converted["layers.1.attn.w_qkv"]
    assert fused.shape == (4, 10)
    assert torch.equal(fused, torch.cat([state[f"layers.1.attn.w_{r}"] for r in "qkv"], dim=1))


def test_out_holding_or_among_the_inputs_is_refused(mingpt) -> None:
    tmp_path, state, plan = mingpt
    (tmp_path / "ckpt").mkdir()
    torch.save(state, tmp_path / "ckpt" / "old.pt")
    # --force on a folder above IN would have deleted IN along with the old OUT.
    _fails(tmp_path, [tmp_path / "ckpt" / "old.pt", tmp_path / "ckpt", "--plan", plan, "--force"],
           "overwrite the input")
    assert (tmp_path / "ckpt" / "old.pt").is_file()
    index = save_sharded(state, tmp_path / "sharded")
    shard = tmp_path / "sharded" / "model-00001-of-00003.safetensors"
    before = shard.read_bytes()
    _fails(tmp_path, [index, shard, "--plan", plan, "--force"], "overwrite the input")
    assert shard.read_bytes() == before


def test_index_naming_a_missing_shard(mingpt) -> None:
    tmp_path, state, plan = mingpt
    index = save_sharded(state, tmp_path / "sharded")
    (tmp_path / "sharded" / "model-00002-of-00003.safetensors").unlink()
    _fails(tmp_path, [index, tmp_path / "new", "--plan", plan], "model-00002-of-00003.safetensors",
           "not in")


def test_unwritable_out_is_an_error_not_a_traceback(mingpt) -> None:
    tmp_path, _, plan = mingpt
    (tmp_path / "afile").write_text("x")
    _fails(tmp_path, [tmp_path / "old.pt", tmp_path / "afile" / "new.pt", "--plan", plan],
           "afile", "cannot write")


def test_planned_class_absent_from_the_checkpoint_is_reported(mingpt) -> None:
    tmp_path, _, plan = mingpt
    document = json.loads(plan.read_text())
    ghost = dict(document["classes"][0], **{"class": "Ghost", "concatenated": [],
                                           "renamed": {"a.weight": "b.weight"}, "dropped": []})
    document["classes"].append(ghost)
    (tmp_path / "ghost.json").write_text(json.dumps(document))
    result = convert(tmp_path / "old.pt", tmp_path / "new.pt", "--plan", tmp_path / "ghost.json")
    assert result.exit_code == 0, result.output
    assert "no instance in this checkpoint: Ghost" in result.output


def test_force_replaces_a_folder_out_even_after_an_interrupted_run(mingpt) -> None:
    tmp_path, state, plan = mingpt
    index = save_sharded(state, tmp_path / "sharded")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "stale.txt").write_text("old output")
    (tmp_path / ".new.replaced").mkdir()  # what an interrupted replace left behind before
    (tmp_path / ".new.replaced" / "x").write_text("x")
    result = convert(index, tmp_path / "new", "--plan", plan, "--force")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "new" / "stale.txt").exists()
    assert (tmp_path / "new" / "model.safetensors.index.json").is_file()


# --- checkpoints in the Hugging Face layouts, and what --force may replace ---------------------

def _save_sharded_bin(state: dict, folder: Path, shards: int = 3) -> Path:
    """`pytorch_model-0000N-of-0000M.bin` shards beside `pytorch_model.bin.index.json`."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin" for i in range(shards)]
    parts: list[dict] = [{} for _ in names]
    for i, (key, tensor) in enumerate(state.items()):
        parts[i % shards][key] = tensor.detach().clone()
    for name, part in zip(names, parts):
        torch.save(part, folder / name)
    weight_map = {k: names[i % shards] for i, k in enumerate(state)}
    index = folder / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


def test_sharded_bin_checkpoint_converts_shard_by_shard(mingpt) -> None:
    tmp_path, state, plan = mingpt
    index = _save_sharded_bin(state, tmp_path / "bin")
    result = convert(index, tmp_path / "new", "--plan", plan)
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "new" / "pytorch_model.bin.index.json").read_text())
    shards = sorted(set(written["weight_map"].values()))
    assert shards == [f"pytorch_model-0000{i}-of-00003.bin" for i in (1, 2, 3)]
    converted = {}
    for name in shards:
        part = torch.load(tmp_path / "new" / name, weights_only=True)
        assert all(written["weight_map"][k] == name for k in part)
        converted.update(part)
    assert set(converted) == set(written["weight_map"])
    fused = converted["blocks.0.attn.qkv.weight"]
    expected = torch.cat([state[f"blocks.0.attn.{r}.weight"] for r in ("query", "key", "value")])
    assert torch.equal(fused, expected) and "blocks.0.attn.query.weight" not in converted


def test_force_never_deletes_shards_linked_from_a_cache_snapshot(mingpt) -> None:
    """Hugging Face's cache: snapshots/<sha>/*.safetensors -> ../../blobs/<hash>. OUT = blobs/ held them."""
    tmp_path, state, plan = mingpt
    source = tmp_path / "src"
    index = save_sharded(state, source)
    blobs, snapshot = tmp_path / "cache" / "blobs", tmp_path / "cache" / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, shard in enumerate(sorted(source.iterdir())):
        (blobs / f"blob{i}").write_bytes(shard.read_bytes())
        (snapshot / shard.name).symlink_to(Path("..", "..", "blobs", f"blob{i}"))
    before = sorted(p.name for p in blobs.iterdir())
    for given in (snapshot, snapshot / index.name):
        result = convert(given, blobs, "--plan", plan, "--force")
        assert result.exit_code == 2 and "overwrite the input" in result.output, result.output
        assert sorted(p.name for p in blobs.iterdir()) == before
    assert all(p.resolve().is_file() for p in snapshot.iterdir())


def test_force_replaces_only_the_same_kind(mingpt) -> None:
    tmp_path, state, plan = mingpt
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "keep.txt").write_text("unrelated")
    _fails(tmp_path, [tmp_path / "old.pt", tmp_path / "results", "--plan", plan, "--force"],
           "is a folder", "file path")
    assert (tmp_path / "results" / "keep.txt").read_text() == "unrelated"
    index = save_sharded(state, tmp_path / "sharded")
    (tmp_path / "out.txt").write_text("unrelated")
    _fails(tmp_path, [index, tmp_path / "out.txt", "--plan", plan, "--force"], "is a file")
    assert (tmp_path / "out.txt").read_text() == "unrelated"


def test_leftovers_of_a_killed_run_are_cleaned_and_a_moved_aside_out_is_restored(mingpt) -> None:
    tmp_path, state, plan = mingpt
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    staged = tmp_path / f".new.pt.tf-migrate-staging-{dead}-abc"
    staged.mkdir()
    (staged / "new.pt").write_text("half written")
    aside = tmp_path / f".old_out.tf-migrate-replaced-{dead}-xyz"
    aside.mkdir()
    (aside / "old_out").mkdir()
    (aside / "old_out" / "previous.txt").write_text("the only copy")
    live = tmp_path / f".new.pt.tf-migrate-staging-{os.getpid()}-live"
    live.mkdir()
    result = convert(tmp_path / "old.pt", tmp_path / "new.pt", "--plan", plan)
    assert result.exit_code == 0, result.output
    assert not staged.exists() and live.exists()
    assert aside.exists()  # only a run writing to old_out looks after old_out's leftovers
    # The killed run had moved old_out aside and died before moving the new one in: put it back,
    # and then it is an existing OUT like any other.
    result = convert(tmp_path / "old.pt", tmp_path / "old_out", "--plan", plan)
    assert result.exit_code == 2 and "exists" in result.output, result.output
    assert (tmp_path / "old_out" / "previous.txt").read_text() == "the only copy" and not aside.exists()


def test_projections_of_different_dtypes_are_not_fused_silently(mingpt) -> None:
    """torch.cat would promote a float16 key weight to float32 and write a fused weight no model has."""
    tmp_path, state, plan = mingpt
    mixed = dict(state)
    mixed["blocks.0.attn.key.weight"] = mixed["blocks.0.attn.key.weight"].half()
    torch.save(mixed, tmp_path / "mixed.pt")
    _fails(tmp_path, [tmp_path / "mixed.pt", tmp_path / "new.pt", "--plan", plan],
           "dtype mismatch", "blocks.0.attn.key.weight float16", "blocks.0.attn.qkv.weight")


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_a_full_disk_is_an_error_not_a_traceback(mingpt, monkeypatch, fmt: str) -> None:
    tmp_path, _, plan = mingpt
    import safetensors.torch

    def full_disk(*args, **kwargs):
        raise RuntimeError("PytorchStreamWriter failed writing file data/3: file write failed")

    def full_disk_safetensors(*args, **kwargs):
        from safetensors import SafetensorError

        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk_safetensors)
    _fails(tmp_path, [tmp_path / "old.pt", tmp_path / f"new.{fmt}", "--plan", plan],
           "cannot write the converted checkpoint", "nothing was written")


def test_check_build_says_it_runs_the_source(mingpt) -> None:
    """convert --check-build imports the migrated file: its help and its first words say so."""
    tmp_path, _, plan = mingpt
    from click.testing import CliRunner

    from tf_migrate.cli import main

    help_text = CliRunner().invoke(main, ["convert", "--help"]).output
    assert "runs the --source file" in " ".join(help_text.split())
    after = tmp_path / "after" / "mingpt_style.py"
    result = convert(tmp_path / "old.pt", tmp_path / "new.pt", "--plan", plan,
                     "--check-build", manifest()["mingpt_style"]["build"], "--source", after)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"tf-migrate convert: --check-build imports and runs {after}")
