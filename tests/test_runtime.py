"""`runtime.tune_cpu_runtime`: XLA:CPU's per-execution temporary buffer is reused, not faulted in again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from prunejax import runtime

# Runs a jitted function whose temporary buffer (a 64 MB intermediate kept whole by an optimization
# barrier) is far above glibc's mmap threshold, then counts the minor page faults of the median later
# execution.
PROBE = """
import json, resource, sys
from prunejax import runtime
tuned = runtime.tune_cpu_runtime()
import jax, jax.numpy as jnp
def f(a, b):
    y = jax.lax.optimization_barrier(jnp.exp(a[:, None] * b[None, :]))  # [8192, 2048]
    return jnp.sum(y, axis=0), jnp.sum(y, axis=1)
a, b = jnp.linspace(0.0, 1.0, 8192), jnp.linspace(0.0, 1.0, 2048)
temp = jax.jit(f).lower(a, b).compile().memory_analysis().temp_size_in_bytes
f = jax.jit(f)
jax.block_until_ready(f(a, b))
faults = []
for _ in range(11):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(f(a, b))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = sorted(faults)[5]  # the median execution: glibc's heap may take a few executions to settle
print(json.dumps({"tuned": tuned, "temp_pages": temp / resource.getpagesize(), "faults": faults}))
"""


def probe(malloc: str) -> dict:
    # one CPU device, as a lone CPU job has (the suite's 8 fake devices bring threads of their own)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PRUNEJAX_MALLOC": malloc, "XLA_FLAGS": ""}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_temporary_buffer_is_reused_not_faulted_in_again():
    system, tuned = probe("system"), probe("reuse")
    assert tuned["tuned"] and not system["tuned"]
    assert system["temp_pages"] > 10_000  # the probe is big enough to be served by mmap
    # glibc's default: every execution maps its buffer afresh and touches every page again
    assert system["faults"] > 0.5 * system["temp_pages"], system
    # tuned: the second execution reuses the first one's pages
    assert tuned["faults"] < 0.05 * tuned["temp_pages"], tuned


def test_only_the_cpu_backend_is_tuned(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "tpu")
    assert not runtime.cpu_only()
    assert not runtime.tune_cpu_runtime()
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert runtime.cpu_only()
    monkeypatch.setenv("PRUNEJAX_MALLOC", "system")
    assert not runtime.tune_cpu_runtime()


def test_compile_cache_dir_is_per_machine_and_can_be_turned_off(monkeypatch, tmp_path):
    monkeypatch.delenv("PRUNEJAX_COMPILE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = runtime.default_cache_dir()
    assert path.startswith(str(tmp_path / "prunejax" / "xla-")) and len(os.path.basename(path)) == 16
    monkeypatch.setenv("PRUNEJAX_COMPILE_CACHE", str(tmp_path / "mine"))
    assert runtime.default_cache_dir() == str(tmp_path / "mine")
    monkeypatch.setenv("PRUNEJAX_COMPILE_CACHE", "off")
    assert runtime.default_cache_dir() is None
