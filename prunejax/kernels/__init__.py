"""One implementation per platform of what the model computes besides plain XLA ops.

- `attention`: the choice (`auto`, `xla`, `splash`, `cudnn`, `cpu`) and the XLA reference.
- `splash`: JAX's Pallas splash kernel for TPU, under `shard_map` (interpret mode off TPU).
- `cpu`: the CPU lowering of projections and attention (written-out backwards).
- `cpu_gemm`: MKL's sgemm as an XLA FFI custom call, used by the CPU lowering where it pays.
"""

IMPLEMENTATIONS = ("auto", "xla", "splash", "cudnn", "cpu")
"""The names an `attention` setting takes (a train config's key, `forward(..., attention=)`)."""
