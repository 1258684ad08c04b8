"""Run a `prunejax` command as one process per "host" on localhost and compare what it writes.

`launch(argv, processes=2, devices=4)` starts the same command N times, joined through
`--coordinator/--num-processes/--process-id`, each process with `devices` fake CPU devices;
`processes=1` runs it alone (no flags), so 1 x 8 and 2 x 4 see the same global device count.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from prunejax.config import LlamaConfig

TIMEOUT_S = 300
# A model small enough that 1 x 8 and 2 x 4 runs take seconds; head and FFN counts divide 2, 4 and 8.
CFG = LlamaConfig(
    vocab_size=256,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=64,
)


@dataclass
class Outcome:
    codes: list[int]
    outputs: list[str]

    def check(self) -> Outcome:
        for i, (rc, out) in enumerate(zip(self.codes, self.outputs, strict=True)):
            assert rc == 0, f"process {i} exited {rc}:\n{out[-4000:]}"
        return self


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(devices: int, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def start(argv: list[str], processes: int, devices: int, heartbeat: int = 10, **extra: str) -> list[subprocess.Popen]:
    base = [sys.executable, "-m", "prunejax.cli", *argv]
    if processes == 1:
        cmds = [base]
    else:
        port = free_port()
        cmds = [
            [*base, "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes), "--process-id", str(i)]
            + ["--heartbeat-timeout", str(heartbeat)]
            for i in range(processes)
        ]
    return [
        subprocess.Popen(c, env=env(devices, **extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for c in cmds
    ]


def wait(procs: list[subprocess.Popen], timeout: float = TIMEOUT_S) -> Outcome:
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"process {procs.index(p)} still running after {timeout}s") from None
    return Outcome([p.returncode for p in procs], outputs)


def launch(argv: list[str], processes: int = 2, devices: int = 4, **extra: str) -> Outcome:
    return wait(start(argv, processes, devices, **extra))


# Wall-clock fields: the only bytes allowed to differ between two runs of the same work.
TIMINGS = {"prunejax.json": ("seconds",)}


def tree_bytes(root: str | Path, base: str | Path | tuple | None = None) -> dict[str, bytes]:
    """Every file under `root` by relative path; JSON files named in TIMINGS lose their timing keys,
    and the absolute path `base` (a run's own output dir, recorded in provenance; or a tuple of such
    paths, e.g. where its inputs and its outputs live) reads as <base>."""
    root = Path(root)
    bases = base if isinstance(base, tuple) else () if base is None else (base,)
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for b in bases:
            data = data.replace(str(b).encode(), b"<base>")
        if path.name in TIMINGS:
            record = json.loads(data)
            for key in TIMINGS[path.name]:
                record.pop(key, None)
            data = json.dumps(record, sort_keys=True).encode()
        out[str(path.relative_to(root))] = data
    return out


def assert_same_tree(a: str | Path, b: str | Path, base_a: str | Path | None = None, base_b: str | Path | None = None):
    ta, tb = tree_bytes(a, base_a), tree_bytes(b, base_b)
    assert sorted(ta) == sorted(tb), f"{a} and {b} hold different files: {sorted(set(ta) ^ set(tb))}"
    differ = [k for k in ta if ta[k] != tb[k]]
    assert not differ, f"{a} and {b} differ in {differ}"
