"""`prunejax compile-check`: will a config fit a TPU topology? Answered from a CPU machine.

The real train step (and the real per-layer calibration step, and SparseGPT's row-sharded solve)
is lowered with the shardings it would get on the pod and compiled by libtpu against a topology
description (no TPU needed); every program is traced for the topology's devices, so it holds the
TPU's kernels (splash attention, `prunejax.kernels`). For each program it reports what decides speed:
XLA's per-chip memory; the executed FLOPs and HBM bytes counted loop-aware over the optimized HLO
(`prunejax.hlo_cost`: XLA's own cost analysis counts a scanned layer once) against the model's FLOPs
(6 x matmul params per token plus causal attention); the roofline at the chip's peaks; the kernels
(custom-call targets) in the program; compile time and the process's peak host RAM. `--dump-hlo DIR`
writes each optimized HLO, `--json PATH` the figures. Needs the
`tpu` extra (`pip install -e '.[tpu]'`, i.e. libtpu); keep it out of environments without TPUs,
where libtpu makes JAX probe for TPUs at start-up.

    prunejax compile-check --model llama-3.1-8b --train-config configs/train/paper.yaml --topology v4-256
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import time
from typing import Any

from prunejax.distributed import add_launch_args

GiB = 2**30

# name -> (topology, chip config, chips per host, HBM bytes per chip)
TOPOLOGIES: dict[str, tuple[str, str, tuple[int, int, int], int]] = {
    "v4-8": ("v4:2x2x1", "megacore", (2, 2, 1), 32 * GiB),
    "v4-16": ("v4:2x2x2", "megacore", (2, 2, 1), 32 * GiB),
    "v4-32": ("v4:2x2x4", "megacore", (2, 2, 1), 32 * GiB),
    "v4-64": ("v4:2x4x4", "megacore", (2, 2, 1), 32 * GiB),
    "v4-128": ("v4:4x4x4", "megacore", (2, 2, 1), 32 * GiB),
    "v4-256": ("v4:4x4x8", "megacore", (2, 2, 1), 32 * GiB),
    "v4-512": ("v4:4x8x8", "megacore", (2, 2, 1), 32 * GiB),
    "v5p-8": ("v5p:2x2x1", "megacore", (2, 2, 1), 95 * GiB),
    "v5p-64": ("v5p:2x4x4", "megacore", (2, 2, 1), 95 * GiB),
    "v5p-256": ("v5p:4x4x8", "megacore", (2, 2, 1), 95 * GiB),
    "v5e-16": ("v5e:4x4", "default", (2, 2, 1), 16 * GiB),
    "v5e-64": ("v5e:8x8", "default", (2, 2, 1), 16 * GiB),
    "v5e-256": ("v5e:16x16", "default", (2, 2, 1), 16 * GiB),
}


@dataclasses.dataclass(frozen=True)
class Fit:
    name: str
    per_chip_bytes: int  # XLA's peak (its heap simulation; what it checks against HBM), else the breakdown's sum
    hbm_bytes: int
    breakdown: dict[str, int]
    compile_s: float = 0.0
    host_rss_bytes: int = 0  # this process's peak resident memory after the compile
    flops: float = 0.0  # executed, per chip, loop-aware (prunejax.hlo_cost)
    hbm_traffic: float = 0.0  # bytes read + written per chip, loop-aware
    roofline_s: float = 0.0
    model_flops: float = 0.0  # per chip: 6 x matmul params per token + causal attention (train steps only)
    kernels: dict[str, int] = dataclasses.field(default_factory=dict)  # custom-call kernel -> executions

    @property
    def fits(self) -> bool:
        return self.per_chip_bytes <= self.hbm_bytes

    def line(self) -> str:
        parts = ", ".join(f"{k} {v / GiB:.2f}" for k, v in self.breakdown.items())
        parts += f"; their sum {sum(self.breakdown.values()) / GiB:.2f}"
        ratio = ""
        if self.model_flops:
            ratio = f" ({self.flops / self.model_flops:.2f}x the model's {self.model_flops:.3e})"
        kernels = ", ".join(f"{k} x{n}" for k, n in sorted(self.kernels.items())) or "none"
        return "\n".join(
            [
                f"{self.name}: peak {self.per_chip_bytes / GiB:.2f} GiB per chip of {self.hbm_bytes / GiB:.0f} GiB "
                f"({'fits' if self.fits else 'DOES NOT FIT'}; GiB: {parts})",
                f"  executed {self.flops:.3e} FLOPs per chip{ratio}, HBM traffic {self.hbm_traffic:.3e} B, "
                f"roofline {self.roofline_s:.2f} s",
                f"  kernels: {kernels}",
                f"  compile {self.compile_s:.0f} s, peak host RAM {self.host_rss_bytes / GiB:.1f} GiB",
            ]
        )


def model_flops_per_step(cfg: Any, tokens: int, seq_len: int) -> float:
    """Training FLOPs of one step of `tokens` tokens: 6 x the matmul parameters (the embedding lookup is
    not a matmul; a tied embedding is the LM head) per token, plus causal attention: QK^T and PV over
    L/2 keys on average, 2 x 2 x (L/2) x heads x head_dim per layer per token forward, x3 with backward."""
    matmul_params = cfg.num_params() - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size)
    attention = 6 * cfg.num_hidden_layers * seq_len * cfg.num_attention_heads * cfg.head_dim
    return float(tokens) * (6 * matmul_params + attention)


def topology_devices(name: str) -> tuple[list[Any], int]:
    if name not in TOPOLOGIES:
        raise ValueError(f"unknown topology {name!r}; known: {', '.join(TOPOLOGIES)}")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    try:
        from jax.experimental.topologies import get_topology_desc

        topo, chip_config, per_host, hbm = TOPOLOGIES[name]
        desc = get_topology_desc(
            platform="tpu",
            topology_name=topo,
            chip_config_name=chip_config,
            chips_per_host_bounds=per_host,
            num_slices=1,
        )
    except Exception as e:  # libtpu missing or too old: say what to install
        raise RuntimeError(
            f"cannot describe TPU topology {name} ({e}); install the tpu extra: pip install -e '.[tpu]'"
        ) from e
    return list(desc.devices), hbm


def _compile(
    name: str,
    lowered: Any,
    hbm: int,
    topology: str | None = None,
    model_flops: float = 0.0,
    kernel_flops: dict[str, float] | None = None,
    dump_hlo: str | None = None,
) -> Fit:
    """Compile, then measure: XLA's memory analysis, and FLOPs, bytes, roofline and kernels counted over
    the optimized HLO (`prunejax.hlo_cost`, with the peaks of the topology's chip when known). With
    `dump_hlo` the optimized HLO is written to that directory."""
    from prunejax import hlo_cost

    start = time.perf_counter()
    compiled = lowered.compile()
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    mem = compiled.memory_analysis()
    breakdown = {
        "arguments": mem.argument_size_in_bytes,
        "outputs": mem.output_size_in_bytes,
        "temporaries": mem.temp_size_in_bytes,
        "aliased": -mem.alias_size_in_bytes,
    }
    # The peak of XLA's heap simulation is what must be resident at once (and what a compile refuses as
    # CompileTimeHbmOom); the sum of the allocations above is larger (temporaries that never overlap).
    peak = getattr(mem, "peak_memory_in_bytes", 0) or sum(breakdown.values())
    text = compiled.as_text()
    if dump_hlo:
        os.makedirs(dump_hlo, exist_ok=True)
        slug = "".join(c if c.isalnum() else "_" for c in name.split("(")[0].strip())
        with open(os.path.join(dump_hlo, f"{slug}.hlo.txt"), "w") as f:
            f.write(text)
    chip = hlo_cost.PEAKS.get(topology.split("-")[0]) if topology else None
    cost = hlo_cost.analyze(text, chip, kernel_flops)
    return Fit(
        name,
        peak,
        hbm,
        breakdown,
        compile_s=seconds,
        host_rss_bytes=rss,
        flops=cost.flops,
        hbm_traffic=cost.bytes,
        roofline_s=cost.roofline_s,
        model_flops=model_flops,
        kernels=dict(cost.kernels),
    )


def check_train(
    cfg: Any, tcfg: Any, devices: list[Any], hbm: int, topology: str | None = None, dump_hlo: str | None = None
) -> Fit:
    """Compile the real train step for `cfg` under train config `tcfg` on `devices`."""
    import jax

    from prunejax import sharding
    from prunejax.kernels import splash
    from prunejax.train import optim, state, step
    from prunejax.train.run import check_micro_batch

    mesh = sharding.make_mesh(tcfg.mesh_data, tcfg.mesh_fsdp, tcfg.mesh_tp, devices=devices)
    check_micro_batch(tcfg, mesh)  # as `train` refuses it, before compiling
    opt = optim.optimizer(tcfg, 1000)
    stacked = state.scans_layers(cfg, None, tcfg.attention, mesh)
    abstract = state.abstract_state(cfg, None, opt, 0, mesh, stacked)  # what `train` compiles ahead, on its mesh
    fn = state.jit_train_step(step.make_train_step(cfg, tcfg, opt, 1000), mesh, abstract)
    batch = state.abstract_batch(mesh, (tcfg.grad_accum, tcfg.global_batch // tcfg.grad_accum, tcfg.seq_len))
    with jax.set_mesh(mesh):  # activations follow the batch axes; kernels by the devices' platform
        lowered = fn.lower(abstract, batch)
    name = (
        f"train step ({tcfg.global_batch} x {tcfg.seq_len}, grad_accum {tcfg.grad_accum}, {tcfg.compute_dtype}, "
        f"remat={tcfg.remat}, attention {tcfg.attention})"
    )
    flops = model_flops_per_step(cfg, tcfg.global_batch * tcfg.seq_len, tcfg.seq_len) / len(devices)
    # each chip's splash kernels attend its own sequences (and, on tp, its share of the heads)
    local = splash.local_work(mesh, tcfg.micro_batch, cfg.num_attention_heads, cfg.num_key_value_heads)
    kernels = splash.kernel_flops(*local, tcfg.seq_len, cfg.head_dim)
    return _compile(name, lowered, hbm, topology, flops, kernels, dump_hlo)


def check_calibration(
    cfg: Any,
    samples: int,
    seq_len: int,
    devices: list[Any],
    hbm: int,
    mesh_spec: str = "data=-1",
    dump_hlo: str | None = None,
) -> Fit:
    """Compile one layer's calibration statistics (Hessians included) exactly as `prune` runs them: a
    batch of `samples` sequences placed by `calibrate.placement` on prune's default mesh (every device
    on the batch axes: split over B when it divides them, else over L), the fixed-order reduction."""
    import jax
    import jax.numpy as jnp

    from prunejax import calibrate, sharding
    from prunejax.train.state import param_shapes

    mesh = sharding.parse_mesh(mesh_spec, devices=devices)  # prune --mesh (default: every device on the batch)
    layer = param_shapes(cfg)["layers"]["0"]
    shardings = sharding.tree_shardings(mesh, layer)
    lp = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), layer, shardings)
    shape = (samples, seq_len, cfg.hidden_size)
    placed = calibrate.placement(shape, mesh)
    x = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=placed)
    split = {0: "batch", 1: "sequence", None: "nothing (replicated)"}[calibrate.split_axis(shape, mesh)]
    lowered = calibrate.layer_statistics.lower(cfg, lp, x, stats=calibrate.STATS, mesh=mesh)
    where = f"mesh {dict(mesh.shape)}, split over {split}"
    name = f"calibration layer ({samples} x {seq_len}, all statistics, {where})"
    return _compile(name, lowered, hbm, dump_hlo=dump_hlo)


def check_sparsegpt(cfg: Any, devices: list[Any], hbm: int, mesh_spec: str = "data=-1") -> list[Fit]:
    """Compile SparseGPT's solve exactly as `prune` runs it, for every projection shape of a layer: W_OI's
    rows sharded over the mesh (`sparse.row_placement`), U whole on every chip, one block solve
    (`_sparsegpt_block`) and the first and widest lazy update (`apply_block`). One Fit per (shape, part).
    The factor of H is not a chip's work: `sparse.host_factor` computes it on the host."""
    import math

    import jax
    import jax.numpy as jnp

    from prunejax import sharding
    from prunejax.prune import sparse
    from prunejax.prune.masks import PROJECTIONS
    from prunejax.train.state import param_shapes

    mesh = sharding.parse_mesh(mesh_spec, devices=devices)
    layer = param_shapes(cfg)["layers"]["0"]
    shapes = set()
    for name, (block, n_in) in PROJECTIONS.items():
        kernel = layer[block][name].shape
        shapes.add((math.prod(kernel[n_in:]), math.prod(kernel[:n_in])))  # (O, I) of W_OI
    fits = []
    for o, i in sorted(shapes):
        rows, everywhere = sparse.row_placement(mesh, o)
        c = min(sparse.BLOCK_SIZE, i)

        def arg(shape: tuple[int, ...], where: Any, dtype: Any = jnp.float32) -> jax.ShapeDtypeStruct:
            return jax.ShapeDtypeStruct(shape, dtype, sharding=where)

        w_OC = arg((o, c), rows)
        parts = {
            "block": sparse._sparsegpt_block.lower(w_OC, arg((c, c), everywhere), arg((), everywhere, jnp.int32), None),
            "lazy update": sparse.apply_block.lower(arg((o, i), rows), w_OC, w_OC, arg((i, i), everywhere), c0=0, c1=c),
        }
        for part, lowered in parts.items():
            fits.append(_compile(f"SparseGPT {part} (W {o} x {i}, mesh {dict(mesh.shape)})", lowered, hbm))
    return fits


def model_config(src: str) -> Any:
    """The architecture only (no weights): a preset name, a MODEL_DIR, or a model YAML/JSON."""
    from prunejax.config import PRESETS, LlamaConfig
    from prunejax.hf import load_config

    if src in PRESETS:
        return PRESETS[src]
    if os.path.isdir(src):
        return load_config(src)
    if os.path.isfile(src):
        return LlamaConfig.from_file(src)
    raise ValueError(f"--model {src!r} is not a preset ({', '.join(PRESETS)}), a MODEL_DIR or a model YAML/JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunejax compile-check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="preset name, MODEL_DIR or model YAML/JSON")
    parser.add_argument("--train-config", help="train YAML (configs/train/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="train config overrides key=value")
    parser.add_argument("--topology", required=True, help=f"one of {', '.join(TOPOLOGIES)}")
    parser.add_argument("--calib-samples", type=int, default=8, help="calibration batch (sequences per step)")
    parser.add_argument("--calib-seq-len", type=int, default=8192)
    parser.add_argument("--calib-mesh", default="data=-1", help="prune's --mesh for calibration (default data=-1)")
    parser.add_argument("--only", choices=("train", "calibration", "sparsegpt"), help="compile just this step")
    parser.add_argument("--dump-hlo", metavar="DIR", help="write each program's optimized HLO to DIR/<program>.hlo.txt")
    parser.add_argument("--json", metavar="PATH", help="write the figures of every program as JSON to PATH")
    add_launch_args(parser)
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile for the TPU topology from this CPU host
    # every program is traced for the topology's devices (a mesh over them), so the kernels chosen are the
    # TPU's (`prunejax.kernels.attention`), whatever this host is
    return _check(args)


def _check(args: argparse.Namespace) -> int:
    from prunejax.train import config as train_config

    cfg = model_config(args.model)
    tcfg = train_config.load(args.train_config, args.overrides)
    devices, hbm = topology_devices(args.topology)
    print(f"{args.topology}: {len(devices)} devices ({devices[0].device_kind}); model {cfg.num_params():,} params")
    fits, results = True, []
    checks = (
        ("train step", lambda: check_train(cfg, tcfg, devices, hbm, args.topology, args.dump_hlo)),
        (
            "calibration",
            lambda: check_calibration(
                cfg, args.calib_samples, args.calib_seq_len, devices, hbm, args.calib_mesh, args.dump_hlo
            ),
        ),
        (
            "sparsegpt solve",
            lambda: max(check_sparsegpt(cfg, devices, hbm, args.calib_mesh), key=lambda f: f.per_chip_bytes),
        ),
    )
    for name, check in checks:
        if args.only and not name.startswith(args.only):
            continue
        try:
            fit = check()
        except Exception as e:  # XLA refuses to compile what cannot fit: that is the answer, not a crash
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            print(f"{name}: DOES NOT FIT — {str(e).splitlines()[0]}")
            fits = False
            continue
        print(fit.line(), flush=True)
        results.append(dataclasses.asdict(fit))
        fits &= fit.fits
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"topology": args.topology, "model": args.model, "programs": results}, f, indent=1)
    return 0 if fits else 1
