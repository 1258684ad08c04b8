"""prunejax.hlo_cost: loop-aware FLOPs and HBM bytes over optimized HLO text."""

import subprocess
import sys
from pathlib import Path

import pytest

from prunejax import hlo_cost
from prunejax.hlo_cost import Peak, analyze, top_ops

DOT = """HloModule m, entry_computation_layout={(f32[8,16]{1,0}, f32[16,4]{1,0})->f32[8,4]{1,0}}

ENTRY %main (a: f32[8,16], b: f32[16,4]) -> f32[8,4] {
  %a = f32[8,16]{1,0} parameter(0)
  %b = f32[16,4]{1,0} parameter(1)
  ROOT %d = f32[8,4]{1,0} dot(f32[8,16]{1,0} %a, f32[16,4]{1,0} %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}
"""


def test_dot_flops_bytes_and_roofline():
    cost = analyze(DOT, Peak("toy", 1e6, 1e5))
    assert cost.flops == 2 * 8 * 4 * 16
    assert cost.bytes == (8 * 16 + 16 * 4 + 8 * 4) * 4
    assert cost.roofline_s == pytest.approx(max(1024 / 1e6, 896 / 1e5))
    assert (cost.unknown_trip_counts, cost.unparsed_instructions, cost.collective_bytes) == (0, 0, 0)
    assert analyze(DOT).roofline_s == 0


FUSION = """HloModule m

%fused (p0: f32[8,16], p1: f32[16,4], p2: f32[4]) -> f32[8,4] {
  %p0 = f32[8,16]{1,0} parameter(0)
  %p1 = f32[16,4]{1,0} parameter(1)
  %p2 = f32[4]{0} parameter(2)
  %d = f32[8,4]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %b = f32[8,4]{1,0} broadcast(%p2), dimensions={1}
  ROOT %s = f32[8,4]{1,0} add(%d, %b)
}

ENTRY %main (a: f32[8,16], w: f32[16,4], c: f32[4]) -> f32[8,4] {
  %a = f32[8,16]{1,0} parameter(0)
  %w = f32[16,4]{1,0} parameter(1)
  %c = f32[4]{0} parameter(2)
  ROOT %f = f32[8,4]{1,0} fusion(%a, %w, %c), kind=kOutput, calls=%fused, metadata={op_name="jit(f)/dot_general"}
}
"""


def test_fusion_counts_its_body_flops_once_and_only_its_boundary_bytes():
    cost = analyze(FUSION)
    assert cost.flops == 2 * 8 * 4 * 16 + 8 * 4  # the dot + the bias add; the broadcast is free
    assert cost.bytes == (8 * 16 + 16 * 4 + 4 + 8 * 4) * 4  # operands + output, not the dot's intermediate
    [op] = top_ops(FUSION, None)
    assert (op.name, op.opcode, op.computation, op.count, op.flops) == ("f", "fusion", "main", 1, 1056)


def _loop(*, bound: int = 7, init: int = 0, step: int = 1, config: str = "", compare: str = "") -> str:
    """x <- x @ w `trip` times; the loop state is (counter, x, w)."""
    compare = compare or "%lt = pred[] compare(%i, %n), direction=LT"
    return f"""HloModule loop

%body (state: (s32[], f32[8,16], f32[16,16])) -> (s32[], f32[8,16], f32[16,16]) {{
  %state = (s32[], f32[8,16]{{1,0}}, f32[16,16]{{1,0}}) parameter(0)
  %i = s32[] get-tuple-element(%state), index=0
  %x = f32[8,16]{{1,0}} get-tuple-element(%state), index=1
  %w = f32[16,16]{{1,0}} get-tuple-element(%state), index=2
  %one = s32[] constant({step})
  %next = s32[] add(%i, %one)
  %y = f32[8,16]{{1,0}} dot(%x, %w), lhs_contracting_dims={{1}}, rhs_contracting_dims={{0}}
  ROOT %out = (s32[], f32[8,16]{{1,0}}, f32[16,16]{{1,0}}) tuple(%next, %y, %w)
}}

%cond (state.1: (s32[], f32[8,16], f32[16,16])) -> pred[] {{
  %state.1 = (s32[], f32[8,16]{{1,0}}, f32[16,16]{{1,0}}) parameter(0)
  %i = s32[] get-tuple-element(%state.1), index=0
  %n = s32[] constant({bound})
  ROOT {compare}
}}

ENTRY %main (x0: f32[8,16], w0: f32[16,16]) -> f32[8,16] {{
  %x0 = f32[8,16]{{1,0}} parameter(0)
  %w0 = f32[16,16]{{1,0}} parameter(1)
  %start = s32[] constant({init})
  %copy = s32[] copy(%start)
  %init = (s32[], f32[8,16]{{1,0}}, f32[16,16]{{1,0}}) tuple(%copy, %x0, %w0)
  %loop = (s32[], f32[8,16]{{1,0}}, f32[16,16]{{1,0}}) while(%init), condition=%cond, body=%body{config}
  ROOT %res = f32[8,16]{{1,0}} get-tuple-element(%loop), index=1
}}
"""


STEP_FLOPS = 2 * 8 * 16 * 16 + 1 + 1  # dot, counter add, compare
STEP_BYTES = (8 * 16 + 16 * 16 + 8 * 16) * 4 + 3 * 4 + (4 + 4 + 1)  # dot, add, compare


def test_known_trip_count_multiplies_flops_and_bytes():
    # The condition says 100; the backend_config's known_trip_count (what XLA proved) wins.
    hlo = _loop(bound=100, config=', backend_config={"known_trip_count":{"n":"7"},"known_init_step":{"init":"0"}}')
    cost = analyze(hlo)
    assert cost.flops == 7 * STEP_FLOPS
    assert cost.bytes == 7 * STEP_BYTES + 4 * 2  # + the counter's copy in the entry
    assert cost.unknown_trip_counts == 0
    assert {op.name: op.count for op in top_ops(hlo, None)} == {"y": 7, "next": 7, "lt": 7, "copy": 1}


@pytest.mark.parametrize(
    "loop",
    [
        dict(bound=7),
        dict(bound=9, init=2),
        dict(bound=6, compare="%le = pred[] compare(%i, %n), direction=LE"),
        dict(bound=7, compare="%gt = pred[] compare(%n, %i), direction=GT"),
        dict(bound=14, step=2),
        dict(bound=15, step=2),  # i = 0, 2, ..., 14: 8 trips
    ],
    ids=["lt", "init", "le", "gt-swapped", "step", "step-rounds-up"],
)
def test_trip_count_from_the_condition(loop):
    expected = 8 if loop.get("bound") == 15 else 7
    cost = analyze(_loop(**loop))
    assert cost.unknown_trip_counts == 0
    assert cost.flops == expected * STEP_FLOPS


def test_trip_count_against_a_non_constant_is_unknown_and_counted_once():
    hlo = _loop(compare="%lt = pred[] compare(%i, %i), direction=LT")
    cost = analyze(hlo)
    assert cost.unknown_trip_counts == 1
    assert cost.flops == STEP_FLOPS


NESTED = """HloModule nested

%inner_body (s: (s32[], f32[8,16], f32[16,16])) -> (s32[], f32[8,16], f32[16,16]) {
  %s = (s32[], f32[8,16]{1,0}, f32[16,16]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%s), index=0
  %x = f32[8,16]{1,0} get-tuple-element(%s), index=1
  %w = f32[16,16]{1,0} get-tuple-element(%s), index=2
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  %y = f32[8,16]{1,0} dot(%x, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %t = (s32[], f32[8,16]{1,0}, f32[16,16]{1,0}) tuple(%next, %y, %w)
}

%cmp (a: s32[], b: s32[]) -> pred[] {
  %a = s32[] parameter(0)
  %b = s32[] parameter(1)
  ROOT %lt = pred[] compare(%a, %b), direction=LT
}

%inner_cond (s.1: (s32[], f32[8,16], f32[16,16])) -> pred[] {
  %s.1 = (s32[], f32[8,16]{1,0}, f32[16,16]{1,0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%s.1), index=0
  %five = s32[] constant(5)
  ROOT %c = pred[] fusion(%i.1, %five), kind=kLoop, calls=%cmp
}

%outer_body (o: (f32[8,16], f32[16,16])) -> (f32[8,16], f32[16,16]) {
  %o = (f32[8,16]{1,0}, f32[16,16]{1,0}) parameter(0)
  %x.1 = f32[8,16]{1,0} get-tuple-element(%o), index=0
  %w.1 = f32[16,16]{1,0} get-tuple-element(%o), index=1
  %zero = s32[] constant(0)
  %init = (s32[], f32[8,16]{1,0}, f32[16,16]{1,0}) tuple(%zero, %x.1, %w.1)
  %inner = (s32[], f32[8,16]{1,0}, f32[16,16]{1,0}) while(%init), condition=%inner_cond, body=%inner_body
  %x.2 = f32[8,16]{1,0} get-tuple-element(%inner), index=1
  ROOT %t.1 = (f32[8,16]{1,0}, f32[16,16]{1,0}) tuple(%x.2, %w.1)
}

%outer_cond (o.1: (f32[8,16], f32[16,16])) -> pred[] {
  %o.1 = (f32[8,16]{1,0}, f32[16,16]{1,0}) parameter(0)
  ROOT %true = pred[] constant(true)
}

ENTRY %main (x0: f32[8,16], w0: f32[16,16]) -> f32[8,16] {
  %x0 = f32[8,16]{1,0} parameter(0)
  %w0 = f32[16,16]{1,0} parameter(1)
  %t0 = (f32[8,16]{1,0}, f32[16,16]{1,0}) tuple(%x0, %w0)
  %outer = (f32[8,16]{1,0}, f32[16,16]{1,0}) while(%t0), condition=%outer_cond, body=%outer_body, \
backend_config={"known_trip_count":{"n":"3"}}
  ROOT %r = f32[8,16]{1,0} get-tuple-element(%outer), index=0
}
"""


def test_nested_loops_multiply():
    cost = analyze(NESTED)
    assert cost.unknown_trip_counts == 0  # inner: compare inside a fusion, against constant 5, from 0
    assert cost.flops == 3 * 5 * STEP_FLOPS
    assert {op.name: op.count for op in top_ops(NESTED, None)}["y"] == 15


# Modeled on what jax 0.10.2 lowers `pl.pallas_call(..., name="my_kernel", cost_estimate=...)` to for TPU:
# the backend_config is raw JSON over several lines (its cost_estimate is written with indent=0).
KERNEL = """HloModule kernels

%body (s: (s32[], f32[8,128])) -> (s32[], f32[8,128]) {
  %s = (s32[], f32[8,128]{1,0:T(8,128)}) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%s), index=0
  %x = f32[8,128]{1,0:T(8,128)} get-tuple-element(%s), index=1
  %one = s32[]{:T(128)} constant(1)
  %next = s32[]{:T(128)} add(%i, %one)
  %pallas_call.1 = f32[8,128]{1,0:T(8,128)} custom-call(f32[8,128]{1,0:T(8,128)} %x), \
custom_call_target="tpu_custom_call", operand_layout_constraints={f32[8,128]{1,0}}, \
frontend_attributes={kernel_metadata={}}, \
metadata={op_name="jit(f)/while/body/outer/my_kernel/pallas_call" source_file="k.py" source_line=7}, \
backend_config={"custom_call_config": {"body": "TUzvUgFNTElSMjMuMC4w", "cost_estimate": {
"bytes_accessed":6789,
"flops":1234,
"remote_bytes_transferred":0,
"transcendentals":5
}, "serialization_format": 1, "needs_layout_passes": true}}
  ROOT %t = (s32[], f32[8,128]{1,0:T(8,128)}) tuple(%next, %pallas_call.1)
}

%cond (s.1: (s32[], f32[8,128])) -> pred[] {
  %s.1 = (s32[], f32[8,128]{1,0:T(8,128)}) parameter(0)
  %i.1 = s32[]{:T(128)} get-tuple-element(%s.1), index=0
  %four = s32[]{:T(128)} constant(4)
  ROOT %lt = pred[]{:T(512)} compare(%i.1, %four), direction=LT
}

ENTRY %main (x0: f32[8,128]) -> f32[8,128] {
  %x0 = f32[8,128]{1,0:T(8,128)} parameter(0)
  %zero = s32[]{:T(128)} constant(0)
  %init = (s32[], f32[8,128]{1,0:T(8,128)}) tuple(%zero, %x0)
  %loop = (s32[], f32[8,128]{1,0:T(8,128)}) while(%init), condition=%cond, body=%body
  %x1 = f32[8,128]{1,0:T(8,128)} get-tuple-element(%loop), index=1
  ROOT %plain = f32[8,128]{1,0:T(8,128)} custom-call(%x1), custom_call_target="tpu_custom_call", \
metadata={op_name="jit(f)/norm_kernel"}, backend_config="{\\"custom_call_config\\": {\\"body\\": \\"TUzv\\"}}"
}
"""


def test_tpu_custom_call_uses_its_cost_estimate_and_names_its_kernel():
    cost = analyze(KERNEL)
    assert cost.unknown_trip_counts == 0 and cost.unparsed_instructions == 0
    # 4 kernel calls with an estimate, 4 + 4 counter adds and compares, one kernel without an estimate (0 FLOPs)
    assert cost.flops == 4 * (1234 + 5) + 4 * 2
    assert cost.bytes == 4 * 6789 + 4 * (12 + 9) + 2 * 8 * 128 * 4
    assert cost.custom_calls == {"tpu_custom_call": 5}
    assert cost.kernels == {"my_kernel": 4, "norm_kernel": 1}
    assert cost.custom_calls_without_cost == 1


def test_real_pallas_lowering_parses():
    """The HLO printer's own text for a real Pallas TPU kernel (lowered for TPU on this CPU host)."""
    import jax
    import jax.numpy as jnp
    from jax._src.interpreters import mlir
    from jax._src.lib import _jax
    from jax.experimental import pallas as pl

    def kernel(x_ref, o_ref):
        o_ref[...] = x_ref[...] * 2.0

    def f(x):
        estimate = pl.CostEstimate(flops=1234, transcendentals=5, bytes_accessed=6789)
        out = jax.ShapeDtypeStruct(x.shape, x.dtype)
        return pl.pallas_call(kernel, out_shape=out, name="my_kernel", cost_estimate=estimate)(x)

    lowered = jax.jit(f).trace(jax.ShapeDtypeStruct((8, 128), jnp.float32)).lower(lowering_platforms=("tpu",))
    module = mlir.module_to_string(lowered.compiler_ir("stablehlo"))
    hlo = _jax.mlir.mlir_module_to_xla_computation(module, use_tuple_args=False, return_tuple=False).as_hlo_text()
    assert '"cost_estimate": {\n' in hlo  # the multi-line form KERNEL above copies
    cost = analyze(hlo)
    assert (cost.flops, cost.bytes, cost.custom_calls) == (1239, 6789, {"tpu_custom_call": 1})
    assert cost.unparsed_instructions == 0


TUPLE = """HloModule t

%fused (p0: f32[4,64], p1: f32[1024,16], p2: s32[], p3: bf16[1024,16]) -> (f32[4,64], bf16[1024,16], f32[64]) {
  %p0 = f32[4,64]{1,0} parameter(0)
  %p1 = f32[1024,16]{1,0} parameter(1)
  %p2 = s32[] parameter(2)
  %p3 = bf16[1024,16]{1,0} parameter(3)
  %neg = f32[4,64]{1,0} negate(%p0)
  %zero = s32[] constant(0)
  %row = f32[1,16]{1,0} dynamic-slice(%p1, %p2, %zero), dynamic_slice_sizes={1,16}
  %upd = bf16[1,16]{1,0} convert(%row)
  %dus = bf16[1024,16]{1,0} dynamic-update-slice(%p3, %upd, %p2, %zero)
  %fzero = f32[] constant(0)
  %red = f32[64]{0} reduce(%p0, %fzero), dimensions={0}, to_apply=%add
  ROOT %out = (f32[4,64]{1,0}, bf16[1024,16]{1,0}, f32[64]{0}) tuple(%neg, %dus, %red)
}

ENTRY %main (a: f32[4,64], table: f32[1024,16], i: s32[], buf: bf16[1024,16]) -> (f32[4,64], bf16[1024,16], f32[64]) {
  %a = f32[4,64]{1,0} parameter(0)
  %table = f32[1024,16]{1,0} parameter(1)
  %i = s32[] parameter(2)
  %buf = bf16[1024,16]{1,0} parameter(3)
  ROOT %f = (f32[4,64]{1,0}, bf16[1024,16]{1,0}, f32[64]{0:S(1)}) fusion(%a, %table, %i, %buf), kind=kLoop, calls=%fused
}
"""


def test_tuple_output_slices_in_place_updates_and_vmem():
    cost = analyze(TUPLE)
    assert cost.flops == 4 * 64 + 16 + 4 * 64  # negate, convert, reduce (1 per input element)
    reads = 4 * 64 * 4 + 16 * 4 + 4  # a; one row of the table (dynamic-slice); i; the buffer is updated in place
    writes = 4 * 64 * 4 + 16 * 2  # the negation; the updated row only; the reduction lives in VMEM (S(1))
    assert cost.bytes == reads + writes
    negated = TUPLE.replace("dynamic-update-slice(%p3,", "dynamic-update-slice(%bc,").replace(
        "  %dus =", "  %bc = bf16[1024,16]{1,0} negate(%p3)\n  %dus ="
    )
    fresh = analyze(negated)  # a DUS into a freshly computed buffer: all of p3 is read, all of the result written
    assert fresh.bytes == reads + 1024 * 16 * 2 + 4 * 64 * 4 + 1024 * 16 * 2


COLLECTIVES = """HloModule c, num_partitions=4

%sum (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %s = f32[] add(%x, %y)
}

ENTRY %main (p: bf16[256,128]) -> bf16[1024,128] {
  %p = bf16[256,128]{1,0} parameter(0)
  %ars = bf16[256,128]{1,0} all-reduce-start(%p), replica_groups={{0,1,2,3}}, to_apply=%sum
  %ard = bf16[256,128]{1,0} all-reduce-done(%ars)
  ROOT %ag = bf16[1024,128]{1,0} all-gather(%ard), dimensions={0}, replica_groups={{0,1,2,3}}
}
"""


def test_collectives_count_once_and_separately():
    cost = analyze(COLLECTIVES)
    reduced = 2 * 256 * 128 * 2  # the start's operand + the done's output
    gathered = (256 + 1024) * 128 * 2
    assert cost.bytes == cost.collective_bytes == reduced + gathered
    assert cost.flops == 0


CONDITIONAL = """HloModule cond

%cheap (a: f32[8,16]) -> f32[8,16] {
  %a = f32[8,16]{1,0} parameter(0)
  ROOT %n = f32[8,16]{1,0} negate(%a)
}

%costly (b: f32[8,16]) -> f32[8,8] {
  %b = f32[8,16]{1,0} parameter(0)
  ROOT %d = f32[8,8]{1,0} dot(%b, %b), lhs_contracting_dims={1}, rhs_contracting_dims={1}
}

ENTRY %main (p: pred[], x: f32[8,16]) -> f32[8,16] {
  %p = pred[] parameter(0)
  %x = f32[8,16]{1,0} parameter(1)
  ROOT %c = f32[8,16]{1,0} conditional(%p, %x, %x), branch_computations={%cheap, %costly}
  %garbage = this is not an instruction
}
"""


def test_conditional_takes_its_costliest_branch_and_garbage_counts_zero():
    cost = analyze(CONDITIONAL)
    assert cost.flops == 2 * 8 * 8 * 16
    assert cost.bytes == (8 * 16 + 8 * 16 + 8 * 8) * 4
    assert cost.unparsed_instructions == 1
    unbalanced = CONDITIONAL.replace("this is not an instruction", "f32[8]{0} negate(%x")  # never closed
    assert analyze(unbalanced).flops == cost.flops and analyze(unbalanced).unparsed_instructions == 1


WIDE = """HloModule wide

%sum6 (a: f32[16], b: f32[16], c: f32[16], d: f32[16], e: f32[16], /*index=5*/f: f32[16]) -> f32[16] {
  %a = f32[16]{0} parameter(0)
  %b = f32[16]{0} parameter(1)
  %c = f32[16]{0} parameter(2)
  %d = f32[16]{0} parameter(3)
  %e = f32[16]{0} parameter(4)
  %f = f32[16]{0} parameter(5)
  %ab = f32[16]{0} add(%a, %b)
  %cd = f32[16]{0} add(%c, %d)
  %ef = f32[16]{0} add(%e, %f)
  %abcd = f32[16]{0} add(%ab, %cd)
  ROOT %all = f32[16]{0} add(%abcd, %ef)
}

ENTRY %main (p0: f32[16], p1: f32[16], p2: f32[16], p3: f32[16], p4: f32[16], /*index=5*/p5: f32[16]) -> f32[16] {
  %p0 = f32[16]{0} parameter(0)
  %p1 = f32[16]{0} parameter(1)
  %p2 = f32[16]{0} parameter(2)
  %p3 = f32[16]{0} parameter(3)
  %p4 = f32[16]{0} parameter(4)
  %p5 = f32[16]{0} parameter(5)
  ROOT %s = f32[16]{0} fusion(%p0, %p1, %p2, %p3, %p4, /*index=5*/%p5), kind=kLoop, calls=%sum6
}
"""


def test_operands_after_the_printers_index_comment():
    cost = analyze(WIDE)
    assert cost.flops == 5 * 16
    assert cost.bytes == 7 * 16 * 4


def _cpu_programs(steps: int = 8, m: int = 16, k: int = 64):
    import jax
    import jax.numpy as jnp

    def scanned(x, ws):
        return jax.lax.scan(lambda c, w: (c @ w, None), x, ws)[0]

    def unrolled(x, ws):
        for i in range(ws.shape[0]):
            x = x @ ws[i]
        return x

    x, ws = jnp.ones((m, k), jnp.float32), jnp.ones((steps, k, k), jnp.float32)
    return [jax.jit(f).lower(x, ws).compile() for f in (scanned, unrolled)]


def test_scan_counts_every_step_like_the_unrolled_loop():
    scanned, unrolled = _cpu_programs()
    one_step = 2 * 16 * 64 * 64
    scan_cost, unroll_cost = analyze(scanned.as_text()), analyze(unrolled.as_text())
    assert scan_cost.unknown_trip_counts == 0 and scan_cost.unparsed_instructions == 0
    assert scan_cost.flops == pytest.approx(8 * one_step, rel=0.01)
    assert unroll_cost.flops == pytest.approx(8 * one_step, rel=0.01)
    assert scan_cost.flops == pytest.approx(unroll_cost.flops, rel=0.01)
    # Each step reads one 64x64 slice of the stacked weights, not the whole stack: the bytes agree too.
    assert scan_cost.bytes == pytest.approx(unroll_cost.bytes, rel=0.25)
    # Why this module exists: XLA's own cost analysis counts the scan's body once.
    assert scanned.cost_analysis()["flops"] < 0.2 * scan_cost.flops
    assert unrolled.cost_analysis()["flops"] == pytest.approx(unroll_cost.flops, rel=0.01)


def test_convolution_flops_on_cpu():
    import jax
    import jax.numpy as jnp

    x, w = jnp.ones((2, 8, 10, 10), jnp.float32), jnp.ones((16, 8, 3, 3), jnp.float32)  # NCHW, OIHW
    conv = jax.jit(lambda x, w: jax.lax.conv(x, w, (1, 1), "VALID")).lower(x, w).compile()
    assert analyze(conv.as_text()).flops == pytest.approx(2 * (2 * 16 * 8 * 8) * (3 * 3 * 8), rel=0.01)


def test_command_line_prints_the_figures(tmp_path: Path):
    path = tmp_path / "kernels.hlo.txt"
    path.write_text(KERNEL)
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-m", "prunejax.hlo_cost", str(path), "--peak", "v5p", "--top", "3"],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
    ).stdout
    assert "FLOPs            4.9640e+03" in out
    assert "roofline" in out and "v5p" in out
    assert "'my_kernel': 4" in out
    assert "pallas_call.1" in out


def test_peaks():
    assert hlo_cost.PEAKS["v5p"] == Peak("v5p", 459e12, 2.765e12)
    assert {"v4", "v5e", "v5p", "h100"} <= set(hlo_cost.PEAKS)


def test_the_callers_kernel_flops_count_a_kernel_without_an_estimate():
    cost = analyze(KERNEL, kernel_flops={"norm_kernel": 500.0})
    assert cost.flops == 4 * (1234 + 5) + 4 * 2 + 500
    assert cost.custom_calls_without_cost == 0


# A dot as TPU HLO writes it: a convolution whose window (32 positions, padded 31 on each side) meets
# the single real input position once per output position; the matmul is [2*8, 6] x [6, 4] per head.
PADDED_CONV = """HloModule m

ENTRY %main (a: bf16[2,8,6,1], b: bf16[6,32,4,1]) -> bf16[2,8,32,4] {
  %a = bf16[2,8,6,1]{1,2,3,0} parameter(0)
  %b = bf16[6,32,4,1]{0,2,1,3} parameter(1)
  ROOT %c = bf16[2,8,32,4]{3,1,2,0} convolution(%a, %b), window={size=1x32 pad=0_0x31_31 rhs_reversal=0x1}, \
dim_labels=0bf1_i1o0->0b1f
}
"""


def test_a_mostly_padding_convolution_counts_only_what_it_multiplies():
    assert analyze(PADDED_CONV).flops == 2 * (2 * 8 * 32 * 4) * 6  # not x32 for the window


def test_a_valid_convolution_counts_its_whole_window():
    conv = PADDED_CONV.replace("pad=0_0x31_31 rhs_reversal=0x1", "pad=0_0x0_0").replace(
        "bf16[2,8,32,4]", "bf16[2,8,1,4]"
    )
    conv = conv.replace("bf16[2,8,6,1]", "bf16[2,8,6,32]")
    assert analyze(conv).flops == 2 * (2 * 8 * 1 * 4) * 6 * 32
