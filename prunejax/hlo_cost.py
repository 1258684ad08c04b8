"""Loop-aware FLOP and HBM-byte counts over XLA's optimized HLO text (`compiled.as_text()`).

XLA's own `cost_analysis()` counts a `while` body once, so a program that scans 32 layers looks 32x
cheaper than one that unrolls them. This counter walks the module from `ENTRY` and multiplies every
executed computation by the trip counts of the loops around it, so the two compare. It reads CPU and
TPU text alike (AOT-compiled for a topology) and imports nothing heavy: it also runs on a dumped file.

Rules (each a deliberate simplification):

- Parsing: computations are `[ENTRY] %name (...) -> ... {` ... `}` blocks; an instruction is
  `[ROOT] %x = SHAPE opcode(operands), attr=value, ...` and may span lines (TPU kernels' JSON
  `backend_config`). Operand shapes come from the operand text when printed, else from the producer.
  An instruction that cannot be parsed or costed counts 0 and is tallied in `unparsed_instructions`.
- Trip count: `"known_trip_count":{"n":...}` in the while's backend_config; else the condition's
  `compare` (direct, or the root of a fusion) of a get-tuple-element of the loop state against a
  constant, with the initial value a constant in the init tuple and the step the constant added in the
  body (1 when not found); LT/LE/GT/GE/NE. Otherwise 1, tallied in `unknown_trip_counts`. The condition
  is counted trip-count times (it really runs once more; negligible).
- FLOPs: `dot` = 2 x output elements x contracted lhs elements; `convolution` = 2 x output batch x
  output features x kernel input features (per group) x, per spatial dimension, the window positions
  that read real input, not padding (TPU writes some dots as mostly-padding convolutions); elementwise
  ops (transcendentals, compare, select, convert included) 1 per output element; `reduce` 1 per input
  element per reduced array; `reduce-window` output elements x window size; `scatter` 1 per update element; all else 0.
  A fusion's FLOPs are its body's. `call` bodies count once per call, `conditional` takes its costliest
  branch, an `async-start` counts its wrapped computation once.
- Bytes (HBM traffic): per top-level instruction of an executed computation (never inside fusions),
  operands + outputs at logical sizes (tiling padding ignored; arrays in memory space `S(1)`, TPU VMEM,
  count 0). Ops that move no data count 0: parameter, constant, get-tuple-element, tuple, bitcast,
  after-all, partition-id, replica-id, opt-barrier, add-dependency, and while/call/conditional/async-*
  (their bodies count instead). An operand that is only sliced (`slice`, `dynamic-slice`, `gather`,
  also inside a fusion, through bitcasts) counts the slices read; a `dynamic-update-slice` target is
  updated in place (the buffer counts 0, the output counts the update). Asynchronous pairs count once,
  at the `-done`: the `-start`'s operands + the `-done`'s output (collectives, `copy-start/done`).
- Collectives (all-gather, all-reduce, reduce-scatter, all-to-all, collective-permute/-broadcast, their
  -start/-done, and fusions that contain one) count in `bytes` and also in `collective_bytes`; their
  roofline uses HBM bandwidth only (ICI time is not modelled).
- Custom calls: a `"cost_estimate"` in the backend_config (Pallas TPU kernels, `tpu_custom_call`)
  gives flops (+ transcendentals, as elementwise ops count them) and bytes_accessed; without one, flops 0
  and bytes = operands + outputs, tallied in `custom_calls_without_cost`. A `tpu_custom_call`'s kernel
  name is a `kernel_name` attribute when printed, else the op_name scope before `pallas_call` (what
  `pallas_call(name=...)` sets), else its last scope.
- Roofline: per top-level op max(flops / peak FLOP/s, bytes / HBM bandwidth) x executions, summed.

    python -m prunejax.hlo_cost train_step.hlo.txt --peak v5p
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from functools import lru_cache


@dataclasses.dataclass(frozen=True)
class Peak:
    """One chip's dense bf16 peak and HBM bandwidth."""

    name: str
    flops_per_s: float
    hbm_bytes_per_s: float


PEAKS: dict[str, Peak] = {
    p.name: p
    for p in (
        Peak("v4", 275e12, 1.2288e12),
        Peak("v5e", 197e12, 8.19e11),
        Peak("v5p", 459e12, 2.765e12),
        Peak("v6e", 918e12, 1.64e12),
        Peak("h100", 989e12, 3.35e12),
    )
}


@dataclasses.dataclass(frozen=True)
class HloCost:
    flops: float  # executed FLOPs, loop bodies x trip counts
    bytes: float  # HBM bytes read + written by top-level ops, loops multiplied
    collective_bytes: float  # the part of `bytes` moved by collectives
    roofline_s: float  # sum over top-level ops of max(flops/peak, bytes/bw) x executions (0 without a peak)
    custom_calls: dict[str, int]  # custom-call target -> executions
    kernels: dict[str, int]  # tpu_custom_call kernel name (other custom calls: target) -> executions
    custom_calls_without_cost: int  # executions of custom calls with no cost_estimate (their FLOPs count 0)
    unknown_trip_counts: int  # while loops whose trip count was not found (counted once)
    unparsed_instructions: int  # instructions that could not be parsed or costed (counted 0)


@dataclasses.dataclass(frozen=True)
class OpCost:
    """One top-level instruction at one call site: `flops` and `bytes` per execution."""

    name: str
    opcode: str
    computation: str
    count: int  # executions (trip counts of the enclosing loops multiplied)
    flops: float
    bytes: float
    roofline_s: float  # over all executions


@dataclasses.dataclass
class _Instr:
    name: str
    shape: str
    opcode: str
    operands: list[str]  # producer names
    operand_shapes: list[str | None]  # shapes printed inline, else None
    raw_operands: str  # the text between the opcode's parentheses (constant literal, parameter number)
    attrs: dict[str, str]


@dataclasses.dataclass
class _Comp:
    name: str
    instrs: dict[str, _Instr]
    root: str | None
    params: dict[int, str]
    _users: dict[str, list[_Instr]] | None = None

    def users(self, name: str) -> list[_Instr]:
        if self._users is None:
            self._users = {}
            for ins in self.instrs.values():
                for op in dict.fromkeys(ins.operands):
                    self._users.setdefault(op, []).append(ins)
        return self._users.get(name, [])


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]()]|,')
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_COMMENT = re.compile(r"/\*.*?\*/")  # the printer's /*index=5*/ marks in long operand lists
_WORD = re.compile(r"\S+")
_STARTS_INSTR = re.compile(r"\s*(?:ROOT\s+)?%[^\s=]+\s*=\s*\S")
_HEADER = re.compile(r"^\s*(ENTRY\s+)?%?([^\s(){}=]+)\s*(?:\(.*\)\s*->\s*.*?)?\{\s*$")
_LHS = re.compile(r"\s*(?:ROOT\s+)?%?([^\s=]+)\s*=\s*")
_OPCODE = re.compile(r"\s*([A-Za-z][\w.\-]*)\(")
_LEAF = re.compile(r"([a-z][a-z0-9]*)\[([^\]]*)\](\{[^}]*\})?")
_BITS = re.compile(r"(?:bf|[sufc])(\d+)")

_OPEN, _CLOSE = "([{", ")]}"
_NO_DATA = {
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "partition-id", "replica-id",
    "opt-barrier", "optimization-barrier", "add-dependency", "domain", "while", "call", "conditional",
    "async-start", "async-update", "async-done",
}  # fmt: skip
_COLLECTIVES = {
    "all-gather", "all-reduce", "reduce-scatter", "all-to-all", "ragged-all-to-all", "collective-permute",
    "collective-broadcast",
}  # fmt: skip
_SLICING = {"slice", "dynamic-slice", "gather"}
_THROUGH = {"copy", "bitcast", "convert", "reshape"}
_ELEMENTWISE = {
    "abs", "add", "and", "atan2", "cbrt", "ceil", "clamp", "compare", "complex", "convert", "cosine",
    "count-leading-zeros", "divide", "erf", "exponential", "exponential-minus-one", "floor", "imag", "is-finite",
    "log", "log-plus-one", "logistic", "map", "maximum", "minimum", "multiply", "negate", "not", "or", "popcnt",
    "power", "real", "reduce-precision", "remainder", "round-nearest-afz", "round-nearest-even", "rsqrt", "select",
    "shift-left", "shift-right-arithmetic", "shift-right-logical", "sign", "sine", "sqrt", "stochastic-convert",
    "subtract", "tan", "tanh", "xor",
}  # fmt: skip


def _tokens(text: str, start: int = 0) -> Iterator[re.Match[str]]:
    return _TOKEN.finditer(text, start)


def _close_of(text: str, open_at: int) -> int:
    """Index of the bracket closing the one at `open_at` (string literals skipped)."""
    depth = 0
    for m in _tokens(text, open_at):
        tok = m.group()
        if tok in _OPEN:
            depth += 1
        elif tok in _CLOSE:
            depth -= 1
            if depth == 0:
                return m.start()
    raise ValueError(f"unbalanced brackets: {text[open_at : open_at + 80]!r}")


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets and string literals."""
    parts, depth, last = [], 0, 0
    for m in _tokens(text):
        tok = m.group()
        if tok in _OPEN:
            depth += 1
        elif tok in _CLOSE:
            depth -= 1
        elif tok == "," and depth == 0:
            parts.append(text[last : m.start()])
            last = m.end()
    parts.append(text[last:])
    return [p.strip() for p in parts if p.strip()]


def _balance(line: str) -> int:
    bare = _STRING.sub("", line) if '"' in line else line
    return sum(bare.count(c) for c in _OPEN) - sum(bare.count(c) for c in _CLOSE)


def _parse_instr(text: str) -> _Instr:
    m = _LHS.match(text)
    if m is None:
        raise ValueError(f"not an instruction: {text[:80]!r}")
    name, pos = m.group(1), m.end()
    if text.startswith("(", pos):
        end = _close_of(text, pos) + 1
    else:
        end = _WORD.match(text, pos).end()
    shape = text[pos:end]
    m = _OPCODE.match(text, end)
    if m is None:
        raise ValueError(f"no opcode: {text[:80]!r}")
    opcode, open_at = m.group(1), m.end() - 1
    close = _close_of(text, open_at)
    raw = text[open_at + 1 : close]
    operands: list[str] = []
    operand_shapes: list[str | None] = []
    if opcode not in ("parameter", "constant", "iota"):
        for piece in _split_top(_COMMENT.sub("", raw)):
            parts = piece.rsplit(None, 1)
            operands.append(parts[-1].lstrip("%"))
            operand_shapes.append(parts[0] if len(parts) == 2 else None)
    attrs = {}
    for piece in _split_top(text[close + 1 :]):
        key, eq, value = piece.partition("=")
        if eq:
            attrs[key.strip()] = value.strip()
    return _Instr(name, shape, opcode, operands, operand_shapes, raw, attrs)


def _parse(hlo_text: str) -> tuple[dict[str, _Comp], str, int]:
    """Computations by name, the entry's name, and the number of unparsable instructions."""
    comps: dict[str, _Comp] = {}
    entry = None
    unparsed = 0
    comp: _Comp | None = None
    pending: list[str] = []
    depth = 0
    for line in hlo_text.splitlines():
        if comp is None:
            m = _HEADER.match(line)
            if m:
                comp = _Comp(m.group(2), {}, None, {})
                if m.group(1):
                    entry = comp.name
            continue
        if pending and (line.strip() == "}" or _STARTS_INSTR.match(line)):
            unparsed += 1  # an unbalanced statement: drop it, keep the rest
            pending, depth = [], 0
        if not pending:
            if line.strip() == "}":
                comps[comp.name] = comp
                comp = None
                continue
            if not line.strip():
                continue
        pending.append(line)
        depth += _balance(line)
        if depth > 0:
            continue
        text, pending, depth = "\n".join(pending), [], 0
        try:
            ins = _parse_instr(text)
        except (ValueError, AttributeError):
            unparsed += 1
            continue
        comp.instrs[ins.name] = ins
        if re.match(r"\s*ROOT\s", text):
            comp.root = ins.name
        if ins.opcode == "parameter":
            comp.params[int(ins.raw_operands)] = ins.name
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    return comps, entry, unparsed


@lru_cache(maxsize=65536)
def _leaves(shape: str) -> tuple[tuple[str, tuple[int, ...], int], ...]:
    """(dtype, dims, memory space) of each array in a (tuple) shape."""
    out = []
    for dtype, dims, layout in _LEAF.findall(shape):
        sizes = tuple(
            int(d) if d.isdigit() else 1 for d in (x.strip().removeprefix("<=") for x in dims.split(",")) if d
        )
        space = re.search(r"S\((\d+)\)", layout)
        out.append((dtype, sizes, int(space.group(1)) if space else 0))
    return tuple(out)


@lru_cache(maxsize=65536)
def _shape_bytes(shape: str) -> float:
    """HBM bytes of a shape: logical sizes, VMEM (memory space 1) and tokens excluded."""
    total = 0.0
    for dtype, dims, space in _leaves(shape):
        m = _BITS.match(dtype)
        bits = 8 if dtype == "pred" else int(m.group(1)) if m else 0
        if space != 1:
            total += math.prod(dims) * bits / 8
    return total


def _elements(shape: str) -> int:
    leaves = _leaves(shape)
    return math.prod(leaves[0][1]) if leaves else 0


def _dims(shape: str) -> tuple[int, ...]:
    leaves = _leaves(shape)
    return leaves[0][1] if leaves else ()


def _ints(value: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", value)]


def _comp_ref(value: str) -> str:
    return value.strip().strip("{}").strip().lstrip("%")


def _const_int(ins: _Instr) -> int | None:
    m = re.fullmatch(r"\s*(-?\d+)\s*", ins.raw_operands)
    return int(m.group(1)) if ins.opcode == "constant" and m else None


class _Tally:
    def __init__(self) -> None:
        self.records: list[OpCost] = []
        self.custom_calls: Counter[str] = Counter()
        self.kernels: Counter[str] = Counter()
        self.without_cost = 0
        self.unknown_trips = 0
        self.unparsed = 0
        self.collective_bytes = 0.0

    def merge(self, other: _Tally) -> None:
        self.records += other.records
        self.custom_calls.update(other.custom_calls)
        self.kernels.update(other.kernels)
        self.without_cost += other.without_cost
        self.unknown_trips += other.unknown_trips
        self.unparsed += other.unparsed
        self.collective_bytes += other.collective_bytes

    def key(self) -> tuple[float, float, float]:
        return (
            sum(r.roofline_s for r in self.records),
            sum(r.flops * r.count for r in self.records),
            sum(r.bytes * r.count for r in self.records),
        )


class _Analysis:
    def __init__(self, hlo_text: str, peak: Peak | None, kernel_flops: Mapping[str, float] | None = None) -> None:
        self.comps, self.entry, unparsed = _parse(hlo_text)
        self.peak = peak
        self.kernel_flops = dict(kernel_flops or {})
        self.tally = _Tally()
        self.tally.unparsed = unparsed
        self._fused_flops: dict[str, float] = {}
        self._collective: dict[str, bool] = {}
        self._walk(self.entry, 1, self.tally, 0)

    # ---- shapes of operands

    def _operand_shape(self, comp: _Comp, ins: _Instr, i: int) -> str:
        shape = ins.operand_shapes[i]
        if shape is not None:
            return shape
        producer = comp.instrs.get(ins.operands[i])
        return producer.shape if producer is not None else ""

    # ---- FLOPs

    def _flops(self, comp: _Comp, ins: _Instr) -> float:
        op = ins.opcode
        if op == "fusion":
            return self._body_flops(_comp_ref(ins.attrs["calls"]))
        if op == "dot":
            lhs = _dims(self._operand_shape(comp, ins, 0))
            contracted = math.prod(lhs[d] for d in _ints(ins.attrs.get("lhs_contracting_dims", "")))
            return 2.0 * _elements(ins.shape) * contracted
        if op == "convolution":
            return _conv_flops(ins, _dims(self._operand_shape(comp, ins, 0)), _dims(self._operand_shape(comp, ins, 1)))
        if op in _ELEMENTWISE:
            return float(_elements(ins.shape))
        if op == "reduce":
            return float(_elements(self._operand_shape(comp, ins, 0)) * max(1, len(ins.operands) // 2))
        if op == "reduce-window":
            window = re.search(r"size=([\dx]+)", ins.attrs.get("window", ""))
            return float(_elements(ins.shape) * (math.prod(_ints(window.group(1))) if window else 1))
        if op == "scatter":
            return float(_elements(self._operand_shape(comp, ins, len(ins.operands) - 1)))
        return 0.0

    def _body_flops(self, name: str) -> float:
        if name not in self._fused_flops:
            self._fused_flops[name] = 0.0  # guards against a cycle
            comp = self.comps[name]
            self._fused_flops[name] = sum(self._flops(comp, ins) for ins in comp.instrs.values())
        return self._fused_flops[name]

    def _has_collective(self, name: str) -> bool:
        if name not in self._collective:
            self._collective[name] = False  # guards against a cycle
            comp = self.comps.get(name)
            self._collective[name] = comp is not None and any(
                _is_collective(i.opcode) or (i.opcode == "fusion" and self._has_collective(_comp_ref(i.attrs["calls"])))
                for i in comp.instrs.values()
            )
        return self._collective[name]

    # ---- bytes

    def _sliced_bytes(self, comp: _Comp, name: str, depth: int = 0) -> float | None:
        """Bytes read from `name` when every use only slices it (through bitcasts); None if some use reads it all."""
        users = comp.users(name)
        if not users or depth > 8:
            return None
        total = 0.0
        for u in users:
            if u.opcode in _SLICING and u.operands[0] == name and name not in u.operands[1:]:
                total += _shape_bytes(u.shape)
            elif u.opcode == "bitcast":
                inner = self._sliced_bytes(comp, u.name, depth + 1)
                if inner is None:
                    return None
                total += inner
            else:
                return None
        return total

    def _bytes(self, comp: _Comp, ins: _Instr) -> float:
        op = ins.opcode
        if op in _NO_DATA or op.endswith("-start"):
            return 0.0
        if op.endswith("-done"):
            start = comp.instrs.get(ins.operands[0]) if ins.operands else None
            reads = (
                sum(_shape_bytes(self._operand_shape(comp, start, i)) for i in range(len(start.operands)))
                if start
                else 0.0
            )
            return reads + _shape_bytes(ins.shape)
        if op == "fusion":
            return self._fusion_bytes(comp, ins)
        total = 0.0
        for i in range(len(ins.operands)):
            full = _shape_bytes(self._operand_shape(comp, ins, i))
            if i == 0 and op in _SLICING:
                total += min(full, _shape_bytes(ins.shape))
            elif i == 0 and op == "dynamic-update-slice":
                continue
            else:
                total += full
        if op == "dynamic-update-slice":
            return total + _shape_bytes(self._operand_shape(comp, ins, 1))
        return total + _shape_bytes(ins.shape)

    def _fusion_bytes(self, comp: _Comp, ins: _Instr) -> float:
        body = self.comps[_comp_ref(ins.attrs["calls"])]
        total = 0.0
        for i in range(len(ins.operands)):
            full = _shape_bytes(self._operand_shape(comp, ins, i))
            param = body.params.get(i)
            if param is None:
                total += full
                continue
            users = body.users(param)
            if users and all(u.opcode == "dynamic-update-slice" and u.operands[0] == param for u in users):
                continue  # updated in place
            sliced = self._sliced_bytes(body, param)
            total += full if sliced is None else min(full, sliced)
        root = body.instrs.get(body.root or "")
        outputs = [body.instrs.get(o) for o in root.operands] if root and root.opcode == "tuple" else [root]
        leaves = _leaves(ins.shape)
        if len(outputs) != len(leaves):
            return total + _shape_bytes(ins.shape)
        for out, (dtype, dims, space) in zip(outputs, leaves, strict=True):
            leaf = _shape_bytes(f"{dtype}[{','.join(map(str, dims))}]") if space != 1 else 0.0
            in_place = out is not None and out.opcode == "dynamic-update-slice"
            target = self._through(body, out.operands[0]) if in_place else None
            if target is not None and target.opcode == "parameter" and leaf:
                leaf = min(leaf, _shape_bytes(self._operand_shape(body, out, 1)))
            total += leaf
        return total

    # ---- loops

    def _through(self, comp: _Comp, name: str) -> _Instr | None:
        ins = comp.instrs.get(name)
        for _ in range(16):
            if ins is None or ins.opcode not in _THROUGH or not ins.operands:
                return ins
            ins = comp.instrs.get(ins.operands[0])
        return ins

    def _term(self, comp: _Comp, name: str) -> tuple[str, int] | None:
        """("const", value) or ("ivar", tuple index of the loop state) for a scalar in a loop computation."""
        ins = self._through(comp, name)
        if ins is None:
            return None
        value = _const_int(ins)
        if value is not None:
            return ("const", value)
        if ins.opcode == "get-tuple-element" and ins.operands:
            src = self._through(comp, ins.operands[0])
            if src is not None and src.opcode == "parameter":
                return ("ivar", int(ins.attrs["index"]))
        return None

    def _binary(self, comp: _Comp, name: str, opcode: str) -> tuple[_Instr, list[tuple[str, int] | None]] | None:
        """The `opcode` instruction computing `name` (directly or as a fusion's root) and its operands' terms."""
        ins = self._through(comp, name)
        if ins is None:
            return None
        if ins.opcode == opcode:
            return ins, [self._term(comp, o) for o in ins.operands]
        if ins.opcode != "fusion":
            return None
        body = self.comps.get(_comp_ref(ins.attrs["calls"]))
        root = self._through(body, body.root or "") if body else None
        if root is None or root.opcode != opcode:
            return None
        terms: list[tuple[str, int] | None] = []
        for o in root.operands:
            inner = self._through(body, o)
            if inner is not None and inner.opcode == "parameter":
                terms.append(self._term(comp, ins.operands[int(inner.raw_operands)]))
            else:
                terms.append(self._term(body, o))
        return root, terms

    def _trip_count(self, comp: _Comp, ins: _Instr) -> int | None:
        known = re.search(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)', ins.attrs.get("backend_config", ""))
        if known:
            return int(known.group(1))
        cond, body = self.comps.get(_comp_ref(ins.attrs["condition"])), self.comps.get(_comp_ref(ins.attrs["body"]))
        found = self._binary(cond, cond.root or "", "compare") if cond else None
        if found is None or len(found[1]) != 2:
            return None
        compare, (lhs, rhs) = found
        direction = compare.attrs.get("direction", "")
        if lhs and rhs and lhs[0] == "const" and rhs[0] == "ivar":
            lhs, rhs = rhs, lhs
            direction = {"GT": "LT", "GE": "LE", "LT": "GT", "LE": "GE"}.get(direction, direction)
        if not (lhs and rhs and lhs[0] == "ivar" and rhs[0] == "const"):
            return None
        index, bound = lhs[1], rhs[1]
        init_tuple = self._through(comp, ins.operands[0]) if ins.operands else None
        if init_tuple is None or init_tuple.opcode != "tuple" or index >= len(init_tuple.operands):
            return None
        init = self._term(comp, init_tuple.operands[index])
        if init is None or init[0] != "const":
            return None
        step = self._step(body, index) if body else 1
        span = {"LT": bound - init[1], "LE": bound - init[1] + 1, "NE": bound - init[1]}.get(direction)
        if span is None or step <= 0 or (direction == "NE" and span % step):
            return None
        return max(0, -(-span // step))

    def _step(self, body: _Comp, index: int) -> int:
        root = self._through(body, body.root or "")
        if root is None or root.opcode != "tuple" or index >= len(root.operands):
            return 1
        found = self._binary(body, root.operands[index], "add")
        if found is not None and ("ivar", index) in found[1]:
            consts = [t[1] for t in found[1] if t and t[0] == "const"]
            if consts:
                return consts[0]
        return 1

    # ---- walking executed computations

    def _walk(self, name: str, count: int, tally: _Tally, depth: int) -> None:
        comp = self.comps.get(name)
        if comp is None or depth > 64:
            tally.unparsed += int(comp is None)
            return
        for ins in comp.instrs.values():
            try:
                self._visit(comp, ins, count, tally, depth)
            except (KeyError, ValueError, IndexError, AttributeError, TypeError):
                tally.unparsed += 1

    def _visit(self, comp: _Comp, ins: _Instr, count: int, tally: _Tally, depth: int) -> None:
        op = ins.opcode
        if op == "while":
            trips = self._trip_count(comp, ins)
            if trips is None:
                tally.unknown_trips += 1
                trips = 1
            for key in ("condition", "body"):
                self._walk(_comp_ref(ins.attrs[key]), count * trips, tally, depth + 1)
            return
        if op in ("call", "async-start"):
            self._walk(_comp_ref(ins.attrs.get("to_apply") or ins.attrs["calls"]), count, tally, depth + 1)
            return
        if op == "conditional":
            if "branch_computations" in ins.attrs:
                branches = [_comp_ref(b) for b in ins.attrs["branch_computations"].strip("{}").split(",")]
            else:
                branches = [_comp_ref(ins.attrs["true_computation"]), _comp_ref(ins.attrs["false_computation"])]
            options = []
            for branch in branches:
                options.append(_Tally())
                self._walk(branch, count, options[-1], depth + 1)
            tally.merge(max(options, key=_Tally.key))
            return
        if op == "custom-call":
            flops, nbytes = self._custom_call(comp, ins, count, tally)
        else:
            flops, nbytes = self._flops(comp, ins), self._bytes(comp, ins)
        if flops == 0 and nbytes == 0:
            return
        if _is_collective(op) or (op == "fusion" and self._has_collective(_comp_ref(ins.attrs["calls"]))):
            tally.collective_bytes += nbytes * count
        roofline = max(flops / self.peak.flops_per_s, nbytes / self.peak.hbm_bytes_per_s) * count if self.peak else 0.0
        tally.records.append(OpCost(ins.name, op, comp.name, count, flops, nbytes, roofline))

    def _custom_call(self, comp: _Comp, ins: _Instr, count: int, tally: _Tally) -> tuple[float, float]:
        target = ins.attrs.get("custom_call_target", "").strip('"')
        tally.custom_calls[target] += count
        tally.kernels[_kernel_name(ins) if target == "tpu_custom_call" else target] += count
        config = ins.attrs.get("backend_config", "").replace('\\"', '"')
        estimate = re.search(r'"cost_estimate"\s*:\s*\{([^{}]*)\}', config)
        if estimate:
            fields = {
                k: float(v)
                for k, v in re.findall(r'"(\w+)"\s*:\s*"?([-+\d.eE]+)', estimate.group(1).replace("\\n", ""))
            }
            if "flops" in fields or "bytes_accessed" in fields:
                return fields.get("flops", 0.0) + fields.get("transcendentals", 0.0), fields.get("bytes_accessed", 0.0)
        reads = sum(_shape_bytes(self._operand_shape(comp, ins, i)) for i in range(len(ins.operands)))
        name = _kernel_name(ins) if target == "tpu_custom_call" else target
        if name in self.kernel_flops:  # the caller's count of what this kernel computes
            return self.kernel_flops[name], reads + _shape_bytes(ins.shape)
        tally.without_cost += count
        return 0.0, reads + _shape_bytes(ins.shape)


def _window_pairs(out: int, size: int, inp: int, stride: int, pad_lo: int, lhs_dil: int, rhs_dil: int) -> int:
    """How many (output position, window position) pairs of one spatial dimension read a real input
    element (not padding, not a hole of lhs dilation)."""
    last = (inp - 1) * lhs_dil
    pairs = 0
    for o in range(out):
        for k in range(size):
            at = o * stride + k * rhs_dil - pad_lo
            pairs += 0 <= at <= last and at % lhs_dil == 0
    return pairs


def _conv_flops(ins: _Instr, lhs: tuple[int, ...], rhs: tuple[int, ...]) -> float:
    """2 x output batch x output features x kernel input features x, per spatial dimension, the window
    positions that land on real input. TPU HLO writes some dots as convolutions whose window mostly
    covers padding (`size=1x32 pad=0_0x31_31` over an input of size 1): those count what they multiply."""
    lhs_l, rest = ins.attrs["dim_labels"].split("_", 1)
    rhs_l, out_l = rest.split("->")
    out = _dims(ins.shape)
    window = ins.attrs.get("window", "")

    def field(name: str, default: list[int]) -> list[int]:
        m = re.search(rf"\b{name}=([\d_x-]+)", window)
        return [int(v) for v in m.group(1).split("x")] if m and name != "pad" else default

    spatial = sorted(c for c in out_l if c.isdigit())
    n = len(spatial)
    sizes = field("size", [rhs[rhs_l.index(c)] for c in spatial])
    strides = field("stride", [1] * n)
    lhs_dil, rhs_dil = field("lhs_dilate", [1] * n), field("rhs_dilate", [1] * n)
    pad = re.search(r"\bpad=([\d_x-]+)", window)
    pads = [int(p.split("_")[0]) for p in pad.group(1).split("x")] if pad else [0] * n
    flops = 2.0 * out[out_l.index("b")] * out[out_l.index("f")] * rhs[rhs_l.index("i")]
    for d, c in enumerate(spatial):
        flops *= _window_pairs(
            out[out_l.index(c)], sizes[d], lhs[lhs_l.index(c)], strides[d], pads[d], lhs_dil[d], rhs_dil[d]
        )
    return flops


def _is_collective(opcode: str) -> bool:
    return opcode.removesuffix("-start").removesuffix("-done") in _COLLECTIVES


def _kernel_name(ins: _Instr) -> str:
    named = re.search(r'kernel_name=\\?"?([^"\\,}\s]+)', ins.attrs.get("frontend_attributes", ""))
    if "kernel_name" in ins.attrs or named:
        return ins.attrs["kernel_name"].strip('"') if "kernel_name" in ins.attrs else named.group(1)
    op_name = re.search(r'op_name="([^"]*)"', ins.attrs.get("metadata", ""))
    scopes = [s for s in op_name.group(1).split("/") if s] if op_name else []
    if len(scopes) > 1 and scopes[-1] == "pallas_call":
        return scopes[-2]
    return scopes[-1] if scopes else "tpu_custom_call"


def analyze(hlo_text: str, peak: Peak | None = None, kernel_flops: Mapping[str, float] | None = None) -> HloCost:
    """Loop-aware FLOPs, HBM bytes and roofline time of an optimized HLO module (rules: module docstring).
    `kernel_flops` gives the FLOPs per execution of custom-call kernels without a cost estimate, by
    kernel name (JAX's splash kernels carry none: `prunejax.kernels.splash.kernel_flops` counts them).

    Raises ValueError when the text has no ENTRY computation.
    """
    tally = _Analysis(hlo_text, peak, kernel_flops).tally
    return HloCost(
        flops=sum(r.flops * r.count for r in tally.records),
        bytes=sum(r.bytes * r.count for r in tally.records),
        collective_bytes=tally.collective_bytes,
        roofline_s=sum(r.roofline_s for r in tally.records),
        custom_calls=dict(tally.custom_calls),
        kernels=dict(tally.kernels),
        custom_calls_without_cost=tally.without_cost,
        unknown_trip_counts=tally.unknown_trips,
        unparsed_instructions=tally.unparsed,
    )


def top_ops(
    hlo_text: str, peak: Peak | None, n: int = 20, kernel_flops: Mapping[str, float] | None = None
) -> list[OpCost]:
    """The `n` top-level ops (per call site) with the largest roofline time, then FLOPs, then bytes."""
    records = _Analysis(hlo_text, peak, kernel_flops).tally.records
    return sorted(records, key=lambda r: (r.roofline_s, r.flops * r.count, r.bytes * r.count), reverse=True)[:n]


def _report(hlo_text: str, peak: Peak | None, n: int, kernel_flops: Mapping[str, float] | None = None) -> str:
    cost = analyze(hlo_text, peak, kernel_flops)
    lines = [
        f"FLOPs            {cost.flops:.4e}",
        f"HBM bytes        {cost.bytes:.4e}  (collectives {cost.collective_bytes:.4e})",
        f"intensity        {cost.flops / cost.bytes if cost.bytes else 0.0:.1f} FLOP/byte",
    ]
    if peak is not None:
        lines.append(f"roofline         {cost.roofline_s:.4e} s on one {peak.name}")
    lines += [
        f"custom calls     {cost.custom_calls or '-'} (without cost estimate: {cost.custom_calls_without_cost})",
        f"kernels          {cost.kernels or '-'}",
        f"unknown trips    {cost.unknown_trip_counts} (those loops counted once)",
        f"unparsed instrs  {cost.unparsed_instructions}",
        "",
        f"{'op':<48} {'opcode':<16} {'count':>7} {'FLOPs/exec':>11} {'bytes/exec':>11} {'share':>6}",
    ]
    total = cost.roofline_s or cost.flops or 1.0
    for r in top_ops(hlo_text, peak, n, kernel_flops):
        part = r.roofline_s if cost.roofline_s else r.flops * r.count
        lines.append(
            f"{r.name[:48]:<48} {r.opcode[:16]:<16} {r.count:>7} {r.flops:>11.3e} {r.bytes:>11.3e} {part / total:>6.1%}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m prunejax.hlo_cost", description=__doc__.splitlines()[0])
    parser.add_argument("file", help="optimized HLO text (compiled.as_text())")
    parser.add_argument("--peak", choices=sorted(PEAKS), help="chip for the roofline time")
    parser.add_argument("--top", type=int, default=20, help="how many ops to list")
    parser.add_argument(
        "--kernel-flops", action="append", default=[], metavar="NAME=FLOPS", help="FLOPs per execution of a kernel"
    )
    args = parser.parse_args(argv)
    kernel_flops = {}
    for item in args.kernel_flops:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--kernel-flops {item!r}: expected NAME=FLOPS")
        kernel_flops[name] = float(value)
    with open(args.file) as f:
        text = f.read()
    print(_report(text, PEAKS[args.peak] if args.peak else None, args.top, kernel_flops))


if __name__ == "__main__":
    main()
