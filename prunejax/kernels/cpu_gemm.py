"""Float32 matmuls on CPU through MKL's sgemm, as an XLA custom call.

XLA:CPU runs a dot with its own (Eigen) kernel: on this project's 2-core AVX-512 machine, SmolLM2's
projections ran at 0.53-0.82x the GFLOP/s of torch's, which calls MKL (`benchmarks/gemm.py`), and
that kernel was the gap on SmolLM2's forward (0.91x -> 1.06x torch's with this; benchmarks/README.md).
`matmul` computes the same product, op(a) @ op(b), with MKL's `cblas_sgemm` behind an XLA FFI
handler (`csrc/sgemm.cc`, ~100 lines): the program stays one jitted XLA program, and the handler
runs where the dot would have run.

It is used only where it can be: float32, a single-device CPU process, MKL installed (the `cpu`
extra: `pip install prunejax[cpu]`) and the handler built (`prunejax cpu-gemm build`, which
`make setup` runs; it needs a C++17 compiler). Anything else takes XLA's dot, which computes the same
product in another summation order. `PRUNEJAX_CPU_GEMM=xla` turns it off; `=mkl` makes its absence
an error instead of a fallback. `prunejax cpu-gemm status` (or `status()`) says which is in use and why.
It is used where it pays: `auto` keeps XLA's dot on AMD CPUs, where it measured faster (`_pays`).

MKL runs sequentially, and the handler splits each product into pieces of rows that run on XLA's
own intra-op threads (the calling thread included). MKL's own OpenMP threads, tried first, competed
with XLA's for the 2 cores: the forward gained, but SmolLM2's train step, where XLA runs independent
backward products and elementwise work side by side, was no faster than XLA's dot.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import hashlib
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

SOURCE = Path(__file__).parent / "csrc" / "sgemm.cc"
LIBRARY = Path(__file__).parent / "_sgemm.so"
TARGET = "prunejax_sgemm"
MIN_FLOPS = 2**28
"""Products of fewer flops (2.7e8) take XLA's dot. The tiny models' products (up to 1.3e8: the LM head
over 2,048 positions) ran as fast or faster on XLA's dot, and so stay exactly as they were."""
ENABLED: bool | None = None
"""None: on CPU processes of one device (several devices: XLA's partitioner would gather a custom
call's operands onto each). True: wherever it can load (the tests, with 8 fake devices). False: off."""

_MKL_THREADING_SEQUENTIAL = 1  # MKL_Set_Threading_Layer's value (mkl_service.h)


class CpuGemmError(RuntimeError):
    """PRUNEJAX_CPU_GEMM=mkl, and MKL's sgemm cannot be used."""


def _source_hash() -> str:
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]


# run in a fresh process: a library that crashes on load must not take the builder with it
_LOAD_TEST = """import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
lib.prunejax_sgemm_source_hash.restype = ctypes.c_char_p
assert lib.prunejax_sgemm_source_hash().decode() == sys.argv[2], "built from another source"
lib.PrunejaxSgemm, lib.prunejax_set_sgemm
"""


def build(out: Path = LIBRARY, compiler: str | None = None) -> Path:
    """Compile `csrc/sgemm.cc` into `out` against jaxlib's FFI headers; the build goes to a temporary
    file that replaces `out` only once it loads and carries this source's hash and entry points (a
    compiler that exits 0 without writing a library leaves the old one), and atomically, so a process
    loading it meanwhile sees the old library or the new one."""
    cxx = compiler or os.environ.get("CXX", "c++")
    include = jax.ffi.include_dir()
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", dir=out.parent)
    os.close(fd)
    cmd = [cxx, "-O2", "-shared", "-fPIC", "-std=c++17", "-isystem", include,
           f'-DPRUNEJAX_SGEMM_SOURCE_HASH="{_source_hash()}"', str(SOURCE), "-o", tmp]  # fmt: skip
    try:
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
        except FileNotFoundError:
            raise CpuGemmError(f"no C++ compiler {cxx!r} to build {SOURCE} (set CXX)") from None
        except subprocess.CalledProcessError as e:
            raise CpuGemmError(f"building {SOURCE} failed:\n{e.stderr}") from None
        except subprocess.TimeoutExpired:
            raise CpuGemmError(f"building {SOURCE} with {cxx!r} took over 600 s; stopped") from None
        test = [sys.executable, "-c", _LOAD_TEST, tmp, _source_hash()]
        try:
            loaded = subprocess.run(test, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise CpuGemmError(f"{cxx!r} built a library that hangs on load; {out} is unchanged") from None
        if loaded.returncode != 0:
            reason = (loaded.stderr.strip().splitlines() or [f"exit code {loaded.returncode}"])[-1]
            raise CpuGemmError(
                f"{cxx!r} exited 0 but its output is not a usable library ({reason}); {out} is unchanged"
            )
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return out


def _find_mkl() -> str | None:
    """libmkl_rt from the `mkl` wheel, which installs it into the environment's lib directory."""
    dirs = {os.path.join(sys.prefix, "lib"), sysconfig.get_config_var("LIBDIR") or ""}
    for d in sorted(d for d in dirs if d):
        found = sorted(glob.glob(os.path.join(d, "libmkl_rt.so*")))
        if found:
            return found[0]
    return None


_registered: list[ctypes.CDLL] = []


@functools.cache
def _load() -> tuple[bool, str]:
    """Register the custom call once per process: (usable, what is used or why not)."""
    mode = os.environ.get("PRUNEJAX_CPU_GEMM", "auto")
    if mode not in ("auto", "mkl", "xla"):
        raise CpuGemmError(f"PRUNEJAX_CPU_GEMM={mode!r}: expected auto, mkl or xla")
    if mode == "xla":
        return False, "XLA's dot (PRUNEJAX_CPU_GEMM=xla)"
    mkl_path = _find_mkl()
    why = None
    if mkl_path is None:
        why = "MKL is not installed (pip install 'prunejax[cpu]')"
    elif not LIBRARY.exists():
        why = f"{LIBRARY.name} is not built (prunejax cpu-gemm build)"
    if why is None:
        try:
            lib = ctypes.CDLL(str(LIBRARY))
            lib.prunejax_sgemm_source_hash.restype = ctypes.c_char_p
            built_from = lib.prunejax_sgemm_source_hash().decode()
        except (OSError, AttributeError) as e:  # truncated, empty, or not this handler
            why = f"{LIBRARY} is not a usable library ({e}; prunejax cpu-gemm build)"
        else:
            if built_from != _source_hash():
                why = f"{LIBRARY} was built from another version of {SOURCE.name} (prunejax cpu-gemm build)"
    if why is not None:
        if mode == "mkl":
            raise CpuGemmError(f"PRUNEJAX_CPU_GEMM=mkl: {why}")
        return False, f"XLA's dot: {why}"
    mkl = ctypes.CDLL(mkl_path)
    if "MKL_THREADING_LAYER" not in os.environ:  # the user's choice stands
        mkl.MKL_Set_Threading_Layer.argtypes, mkl.MKL_Set_Threading_Layer.restype = [ctypes.c_int], ctypes.c_int
        mkl.MKL_Set_Threading_Layer(_MKL_THREADING_SEQUENTIAL)
    lib.prunejax_set_sgemm.argtypes = [ctypes.c_void_p]
    lib.prunejax_set_sgemm(ctypes.cast(mkl.cblas_sgemm, ctypes.c_void_p))
    if not _registered:  # once per process, even when a test reloads
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.PrunejaxSgemm), platform="cpu")
        _registered.append(lib)
    runtime = f"MKL_THREADING_LAYER={os.environ.get('MKL_THREADING_LAYER', 'SEQUENTIAL')}"
    return True, f"MKL's sgemm ({os.path.basename(mkl_path)}, {runtime})"


def cpu_vendor() -> str:
    """The CPU's vendor_id from /proc/cpuinfo ("GenuineIntel", "AuthenticAMD"), "" where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


@functools.cache
def _pays() -> tuple[bool, str]:
    """Whether `auto` uses the loaded custom call on this CPU: not on AMD's. On an AMD EPYC host the
    SmolLM2 train step took 5.4 s with it against 4.9 s with XLA's dot (A/B in alternating processes,
    benchmarks/README.md), while on the Intel host before it closed SmolLM2's forward gap to torch.
    PRUNEJAX_CPU_GEMM=mkl uses it on any CPU."""
    if os.environ.get("PRUNEJAX_CPU_GEMM", "auto") == "mkl" or cpu_vendor() != "AuthenticAMD":
        return True, ""
    return False, "XLA's dot: on AMD CPUs it is faster than MKL's sgemm (PRUNEJAX_CPU_GEMM=mkl to use MKL)"


def status() -> str:
    """Which float32 matmul a single-device CPU process runs, and why."""
    ok, why = _load()
    if ok and not _pays()[0]:
        return _pays()[1]
    return why


def usable(m: int, k: int, n: int, *dtypes: jnp.dtype) -> bool:
    """Whether a [m, k] x [k, n] product of these operand dtypes takes MKL's sgemm: float32, large
    enough, on a CPU process of one device with the custom call loaded. Decided at trace time."""
    if any(jnp.dtype(d) != jnp.float32 for d in dtypes) or 2 * m * k * n < MIN_FLOPS:
        return False
    if ENABLED is False or jax.default_backend() != "cpu":
        return False
    if ENABLED is None and (jax.device_count() != 1 or not _pays()[0]):
        return False
    return _load()[0]


def matmul(a: jax.Array, b: jax.Array, trans_a: bool = False, trans_b: bool = False) -> jax.Array:
    """op(a) @ op(b) for float32 matrices, op transposing where asked: one cblas_sgemm call, the
    transposes read in place. Call it only where `usable` says so."""
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    out = jax.ShapeDtypeStruct((m, n), jnp.float32)
    call = jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")
    return call(a, b, trans_a=trans_a, trans_b=trans_b)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="prunejax cpu-gemm", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["build", "status"])
    args = p.parse_args(argv)
    if args.command == "build":
        try:
            print(f"built {build()}")
        except CpuGemmError as e:
            print(f"prunejax.cpu_gemm: {e}", file=sys.stderr)
            return 1
    else:
        print(status())
    return 0
