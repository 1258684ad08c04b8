"""Process-wide settings made before a job's first JAX computation: CPU memory reuse and the
persistent compilation cache.

XLA:CPU allocates each execution's temporary buffer with malloc (121 MB for the tiny study's train
step) and frees it when the execution ends. glibc serves a request that large with a fresh mmap, so
every step page-faults its whole working set back in: ~40,000 minor faults per step of the tiny
study's parent, whose step takes 137 ms with them and 112 ms without (benchmarks/README.md).
`tune_cpu_runtime` makes the memory stay:

* glibc: no mmap for large blocks and no trimming of the heap, so a freed block is reused. Trimming
  is off entirely (M_TRIM_THRESHOLD = -1): the largest threshold mallopt takes otherwise, 2^31 - 1,
  still let glibc hand back the 3 GB buffer of SmolLM2's step (4 x 256) each time it was freed, and the
  next step faulted all of it in again (763,000 minor faults and ~1 s of system time per step);
* JAX: synchronous CPU dispatch. The allocation happens on the thread that executes; with
  asynchronous dispatch that is a worker thread, whose glibc arena cannot hold a block over 64 MB
  and maps it anyway (limiting glibc to one arena would fix that too, but makes compilation ~40%
  slower: XLA's threads then contend for one lock). Executed inline, the buffer comes from the
  main heap. The train loop loses nothing: it reads each step's metrics one step late either way.

The price: memory a job frees is reused by the job but not returned to the OS before it exits (the
resident size stays at its peak). Accelerator backends allocate their own memory: with a TPU or GPU
plugin installed, or JAX_PLATFORMS naming anything but cpu, nothing is changed. PRUNEJAX_MALLOC=system
keeps glibc's and JAX's defaults.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import platform
import sys

# mallopt(3) parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
ACCELERATOR_PLUGINS = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin")


def cpu_only() -> bool:
    """Whether JAX will run on the CPU backend (decided without starting a backend)."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(importlib.util.find_spec(name) for name in ACCELERATOR_PLUGINS)


def tune_cpu_runtime() -> bool:
    """Make XLA:CPU's per-step buffers reuse memory (see the module docstring); returns whether it did.
    Call it before the first JAX computation: the dispatch mode is fixed when the CPU backend starts."""
    if os.environ.get("PRUNEJAX_MALLOC", "reuse") == "system" or not cpu_only():
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not (mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, -1)):
        return False
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True


def enable_compile_cache(path: str) -> None:
    """Keep every compiled program in `path` (JAX's persistent cache): a later run of the same shapes
    loads its steps instead of compiling them again (a whole tiny parent run: 17.0 s cold, 12.1 s
    warm; benchmarks/README.md)."""
    import jax

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def default_cache_dir() -> str | None:
    """Where a verb keeps compiled programs: PRUNEJAX_COMPILE_CACHE if set ("off" for none), else
    ~/.cache/prunejax/xla-<host> (XDG_CACHE_HOME respected). <host> hashes the machine type and CPU
    flags: XLA:CPU's cached programs are machine code for this CPU, so a home directory shared by
    different machines must not hand one machine's code to another."""
    chosen = os.environ.get("PRUNEJAX_COMPILE_CACHE")
    if chosen:
        return None if chosen == "off" else chosen
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "prunejax", f"xla-{_host_key()}")


def _host_key() -> str:
    text = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            text += "".join(sorted({line for line in f if line.startswith(("model name", "flags"))}))
    except OSError:
        pass
    return hashlib.sha256(text.encode()).hexdigest()[:12]
