"""`prunejax prune`: writes a loadable MODEL_DIR with masks and provenance; every bad input is a clear
error and leaves nothing behind."""

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers

from prunejax import hf, tree
from prunejax.cli import main
from prunejax.config import TINY
from prunejax.data.store import write_data_dir
from prunejax.model import forward, init_params
from prunejax.prune import PruneError

CFG = TINY.replace(num_hidden_layers=2)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune_cli")
    params = init_params(CFG, jax.random.key(4))
    hf.save(str(root / "model"), CFG, params)
    rng = np.random.default_rng(4)
    chunks = [rng.integers(0, CFG.vocab_size, 4 * 32, dtype=np.int32)]
    write_data_dir(str(root / "data"), {"train": chunks, "validation": chunks}, vocab_size=CFG.vocab_size, eos_id=0)
    big = [rng.integers(0, 4 * CFG.vocab_size, 4 * 32, dtype=np.int32)]
    write_data_dir(str(root / "bigvocab"), {"train": big}, vocab_size=4 * CFG.vocab_size, eos_id=0)
    nan_params = jax.tree.map(lambda x: x, params)
    nan_params["layers"]["1"]["mlp"]["gate_proj"] = nan_params["layers"]["1"]["mlp"]["gate_proj"].at[3, 3].set(np.nan)
    hf.save(str(root / "nanmodel"), CFG, nan_params)
    return root


def run(dirs, *extra, out="out"):
    base = ["prune", "--model", str(dirs / "model"), "--calib", str(dirs / "data")]
    return main(base + ["--calib-samples", "4", "--calib-seq-len", "32", "--out", str(dirs / out), *extra])


def test_sparse_2_4_writes_masks_and_provenance(dirs, capsys):
    assert run(dirs, "--method", "sparsegpt", "--ratio", "0.5", "--pattern", "2:4", out="sgpt") == 0
    out = dirs / "sgpt"
    assert (out / hf.MASKS_FILE).exists()
    prov = hf.load_provenance(str(out))
    assert prov["method"] == "sparsegpt" and prov["requested_ratio"] == 0.5 and prov["realized_ratio"] == 0.5
    assert prov["options"]["pattern"] == "2:4" and prov["options"]["calib_samples"] == 4
    assert prov["calibration"]["fingerprint"] and prov["parent"] == os.path.abspath(dirs / "model")
    assert prov["sparsity"]["mask_sparsity"] == 0.5
    cfg, params = hf.load(str(out))
    masks = hf.load_masks(str(out), cfg)
    assert not np.any(
        np.asarray(params["layers"]["0"]["mlp"]["down_proj"])[~np.asarray(masks["layers"]["0"]["mlp"]["down_proj"])]
    )
    text = capsys.readouterr().out
    assert "layer  sparsity" in text and "    1  0.5000" in text


def test_depth_by_target_loads_in_transformers(dirs, capsys):
    assert run(dirs, "--method", "shortgpt", "--target", "layers=1", out="short") == 0
    cfg, params = hf.load(str(dirs / "short"))
    assert cfg.num_hidden_layers == 1
    model = transformers.AutoModelForCausalLM.from_pretrained(str(dirs / "short"), dtype=torch.float32).eval()
    tokens = np.arange(12, dtype=np.int32)[None]
    with torch.no_grad():
        ref = model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(ref, forward(cfg, params, tokens), atol=1e-4)
    prov = hf.load_provenance(str(dirs / "short"))
    assert prov["requested_ratio"] is None and prov["realized_ratio"] == 0.5
    assert "removed layers" in capsys.readouterr().out


def test_magnitude_needs_no_calibration(dirs):
    out = dirs / "mag"
    assert (
        main(["prune", "--model", str(dirs / "model"), "--method", "magnitude", "--ratio", "0.25", "--out", str(out)])
        == 0
    )
    assert json.loads((out / hf.PROVENANCE_FILE).read_text())["calibration"] is None


def test_mesh_option_splits_calibration_and_keeps_the_masks(dirs):
    """Default: every device on the batch axis (as train and eval; 4 rows do not divide 8, so they stay on
    one device); --mesh fsdp=2,tp=2 splits each batch of 4 over data x fsdp = 4 devices. Same masks."""
    wanda = ["--method", "wanda", "--ratio", "0.5", "--batch-size", "4"]
    assert run(dirs, *wanda, out="wanda_default") == 0
    assert run(dirs, *wanda, "--mesh", "fsdp=2,tp=2", out="wanda_m") == 0
    default, split = (hf.load_provenance(str(dirs / d))["options"]["mesh"] for d in ("wanda_default", "wanda_m"))
    assert default == {"data": 8, "fsdp": 1, "tp": 1} and split == {"data": 2, "fsdp": 2, "tp": 2}
    cfg = hf.load_config(str(dirs / "wanda_m"))
    masks = [hf.load_masks(str(dirs / d), cfg) for d in ("wanda_default", "wanda_m")]
    jax.tree.map(np.testing.assert_array_equal, *masks)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "wanda", "--ratio", "1.5"], "--ratio must be in (0, 1), got 1.5"),
        (["--method", "wandaa", "--ratio", "0.5"], "unknown pruning method 'wandaa'; valid methods: magnitude, "),
        (["--method", "wanda", "--ratio", "0.5", "--pattern", "3:8"], "pattern 3:8 prunes 0.625 of the weights"),
        (["--method", "wanda", "--ratio", "0.9375", "--pattern", "2:32"], "does not divide the input dimension 176"),
        (
            ["--method", "minitron-width", "--target", "hidden=128"],
            "hidden=128 is larger than the model's hidden_size=64",
        ),
        (["--method", "shortgpt", "--target", "hidden=32"], "only changes the number of layers"),
        (["--method", "minitron-depth", "--ratio", "0.5", "--pattern", "2:4"], "applies to sparse methods only"),
        (
            ["--method", "wanda", "--ratio", "0.5", "--calib-samples", "64"],
            "needs 64 x 32 = 2,048 tokens, the train split has 128",
        ),
        (["--method", "wanda", "--ratio", "0.5", "--mesh", "data=3"], "needs 3 devices, 8 available"),
        (["--method", "wanda", "--ratio", "0.5", "--mesh", "dp=8"], "expected AXIS=INT items"),
        (
            ["--method", "wanda", "--ratio", "0.5", "--calib-seq-len", "1024"],
            "--calib-seq-len 1024 exceeds the model's max_position_embeddings",
        ),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(dirs, capsys, args, message):
    assert run(dirs, *args, out="bad") == 1
    err = capsys.readouterr().err
    assert "prunejax prune: error:" in err and message in err, err
    assert not (dirs / "bad").exists()
    assert not [p for p in os.listdir(dirs) if p.startswith(".bad")]


def test_bad_data_and_models_are_clear_errors(dirs, capsys):
    assert (
        main(
            [
                "prune",
                "--model",
                str(dirs / "model"),
                "--method",
                "wanda",
                "--ratio",
                "0.5",
                "--calib",
                str(dirs / "bigvocab"),
                "--calib-samples",
                "4",
                "--calib-seq-len",
                "32",
                "--out",
                str(dirs / "bad"),
            ]
        )
        == 1
    )
    assert "outside the model's vocabulary of 512" in capsys.readouterr().err
    assert (
        main(
            [
                "prune",
                "--model",
                str(dirs / "nanmodel"),
                "--method",
                "wanda",
                "--ratio",
                "0.5",
                "--calib",
                str(dirs / "data"),
                "--calib-samples",
                "4",
                "--calib-seq-len",
                "32",
                "--out",
                str(dirs / "bad"),
            ]
        )
        == 1
    )
    assert "nanmodel: weight layers/1/mlp/gate_proj holds NaN or Inf" in capsys.readouterr().err  # before calibration
    assert (
        main(
            ["prune", "--model", str(dirs / "model"), "--method", "wanda", "--ratio", "0.5", "--out", str(dirs / "bad")]
        )
        == 1
    )
    assert "wanda needs calibration data: give --calib DATA_DIR" in capsys.readouterr().err
    assert not (dirs / "bad").exists()


def test_non_finite_model_is_refused_before_pruning(dirs, capsys):
    # magnitude needs no calibration, so nothing else would notice: it used to pass the NaN on
    argv = ["prune", "--model", str(dirs / "nanmodel"), "--method", "magnitude", "--ratio", "0.5"]
    assert main([*argv, "--out", str(dirs / "bad")]) == 1
    assert "nanmodel: weight layers/1/mlp/gate_proj holds NaN or Inf" in capsys.readouterr().err
    assert not (dirs / "bad").exists()


def test_pruning_a_sparse_model_composes_masks_or_refuses(dirs, capsys):
    model = ["prune", "--model", str(dirs / "model"), "--method", "magnitude", "--ratio", "0.5"]
    assert main([*model, "--out", str(dirs / "half")]) == 0
    cfg = hf.load_config(str(dirs / "half"))
    half = hf.load_masks(str(dirs / "half"), cfg)
    calib = ["--calib", str(dirs / "data"), "--calib-samples", "4", "--calib-seq-len", "32"]
    # wanda per row at 0.3 < the input's 0.5: the composition keeps every earlier zero and realizes more than 0.5
    for method, ratio in (("wanda", "0.3"), ("sparsegpt", "0.7"), ("magnitude", "0.6")):
        out = dirs / f"again-{method}"
        again = ["prune", "--model", str(dirs / "half"), "--method", method, "--ratio", ratio, *calib]
        assert main([*again, "--out", str(out)]) == 0
        assert "composed with the input's masks (sparsity 0.5000)" in capsys.readouterr().out
        masks = hf.load_masks(str(out), cfg)
        _, params = hf.load(str(out))
        pruned = total = 0
        for path, m in tree.leaf_paths(half):
            new = np.asarray(tree.get_path(masks, path))
            assert not np.any(new & ~np.asarray(m)), "/".join(path)  # pruned once, pruned for good
            assert not np.any(np.asarray(tree.get_path(params, path))[~new]), "/".join(path)
            pruned, total = pruned + int((~new).sum()), total + new.size
        prov = hf.load_provenance(str(out))
        assert prov["realized_ratio"] == pytest.approx(pruned / total) and prov["input_sparsity"] == 0.5
        assert prov["realized_ratio"] >= max(0.5, float(ratio)) - 1e-6
        assert prov["report"]["method_realized_ratio"] == pytest.approx(float(ratio), abs=0.01)
    assert prov["realized_ratio"] == pytest.approx(0.6, abs=1e-3)  # magnitude's lowest 60% include the zeros
    # a depth method keeps the surviving layers' masks; width would have to slice them, and refuses
    deep = ["prune", "--model", str(dirs / "half"), "--method", "shortgpt", "--ratio", "0.5", *calib]
    assert main([*deep, "--out", str(dirs / "half-depth")]) == 0
    assert "survivors keep the input's masks (sparsity 0.5000)" in capsys.readouterr().out
    removed = hf.load_provenance(str(dirs / "half-depth"))["report"]["removed_layers"]
    kept = [i for i in range(CFG.num_hidden_layers) if i not in removed]
    depth_cfg = hf.load_config(str(dirs / "half-depth"))
    carried = hf.load_masks(str(dirs / "half-depth"), depth_cfg)
    assert depth_cfg.num_hidden_layers == len(kept) == 1
    for path, m in tree.leaf_paths(half["layers"][str(kept[0])]):
        np.testing.assert_array_equal(np.asarray(tree.get_path(carried["layers"]["0"], path)), np.asarray(m))
    width = ["prune", "--model", str(dirs / "half"), "--method", "minitron-width", "--ratio", "0.5", *calib]
    assert main([*width, "--out", str(dirs / "bad")]) == 1
    err = capsys.readouterr().err
    assert "half is sparse (masks.safetensors)" in err and "prune structurally first" in err, err
    assert not (dirs / "bad").exists()


def test_existing_output_needs_overwrite(dirs, capsys):
    os.makedirs(dirs / "taken", exist_ok=True)
    (dirs / "taken" / "keep.txt").write_text("x")
    assert run(dirs, "--method", "magnitude", "--ratio", "0.5", out="taken") == 1
    assert "exists and is not empty (pass --overwrite)" in capsys.readouterr().err
    assert (dirs / "taken" / "keep.txt").exists()
    assert run(dirs, "--method", "magnitude", "--ratio", "0.5", "--overwrite", out="taken") == 0
    assert not (dirs / "taken" / "keep.txt").exists()


def test_prune_model_is_the_cli_without_flags(dirs, capsys):
    from prunejax.prune.run import prune_model

    out, cli_out = str(dirs / "by_function"), str(dirs / "by_cli")
    assert prune_model(str(dirs / "model"), "magnitude", ratio=0.25, out=out) == out
    assert (
        main(["prune", "--model", str(dirs / "model"), "--method", "magnitude", "--ratio", "0.25", "--out", cli_out])
        == 0
    )
    prov, by_cli = (hf.load_provenance(d) for d in (out, cli_out))
    assert {**prov, "seconds": 0} == {**by_cli, "seconds": 0}  # the MODEL_DIR `prunejax prune` writes
    assert (dirs / "by_function" / "model.safetensors").read_bytes() == (
        dirs / "by_cli" / "model.safetensors"
    ).read_bytes()
    for both in ({"ratio": 0.5, "target": "layers=1"}, {}):  # argparse's group, for callers without a parser
        with pytest.raises(PruneError, match="give exactly one of --ratio or --target"):
            prune_model(str(dirs / "model"), "shortgpt", **both, calib=str(dirs / "data"), out=str(dirs / "x"))
    with pytest.raises(PruneError, match="wanda needs calibration data"):  # the CLI's messages, as exceptions
        prune_model(str(dirs / "model"), "wanda", ratio=0.5, out=str(dirs / "x"))
