"""`prunejax convert`: a MODEL_DIR's masks come along (applied to the weights), whatever the dtype."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from prunejax import cli, hf


def test_convert_keeps_the_masks_of_a_sparse_model_dir(make_hf_model, tmp_path):
    path, _ = make_hf_model()
    cfg, params = hf.load(path)
    w = params["layers"]["1"]["mlp"]["down_proj"]
    mask = np.asarray(w) > 0
    # one masked weight is left nonzero, as if edited after pruning: the written model must honour its mask
    params["layers"]["1"]["mlp"]["down_proj"] = jnp.where(mask, w, 0.0).at[np.nonzero(~mask)[0][0], 0].set(1.0)
    masks = {"layers": {"1": {"mlp": {"down_proj": jnp.asarray(mask)}}}}
    src = hf.save(str(tmp_path / "sparse"), cfg, params, masks, provenance={"stage": "prune", "method": "x"})
    for dtype in (None, "bfloat16"):
        out = str(tmp_path / f"converted-{dtype}")
        assert cli.main(["convert", src, "--out", out, *(["--dtype", dtype] if dtype else [])]) == 0
        assert os.path.exists(os.path.join(out, hf.MASKS_FILE))
        out_cfg, out_params = hf.load(out)
        kept = hf.load_masks(out, out_cfg)
        np.testing.assert_array_equal(np.asarray(kept["layers"]["1"]["mlp"]["down_proj"]), mask)
        assert not np.any(np.asarray(out_params["layers"]["1"]["mlp"]["down_proj"], np.float32)[~mask])
        record = hf.load_provenance(out)
        assert record["sparsity"]["mask_sparsity"] == pytest.approx(1 - mask.mean())
        assert record["sparsity"]["zero_fraction"] >= record["sparsity"]["mask_sparsity"]
        assert record["source_provenance"]["method"] == "x"
