"""Wall time of one `prunejax prune` as 1 process x D devices against P processes x D/P devices.

The same global device count either way, runs interleaved, medians with min-max, the load average
printed with each figure; the MODEL_DIRs of the two layouts are checked byte-equal (bar the wall
clock in prunejax.json) so the timing compares the same work.

  python benchmarks/prune_processes.py --model models/smollm2 --calib data/kjv-smol --method sparsegpt \
      --devices 2 --processes 2 --calib-samples 8 --calib-seq-len 512 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(argv: list[str], processes: int, devices: int, out: str) -> float:
    """Seconds from the first process's start to the last one's exit."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    base = [sys.executable, "-m", "prunejax.cli", *argv, "--out", out]
    port = free_port()
    cmds = (
        [base]
        if processes == 1
        else [
            [*base, "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes), "--process-id", str(i)]
            for i in range(processes)
        ]
    )
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in cmds]
    outputs = [p.communicate()[0] for p in procs]
    seconds = time.perf_counter() - t0
    for p, o in zip(procs, outputs, strict=True):
        if p.returncode:
            raise SystemExit(f"{' '.join(cmds[0])} failed:\n{o[-3000:]}")
    return seconds


def model_bytes(d: str) -> dict[str, bytes]:
    out = {}
    for p in sorted(Path(d).iterdir()):
        data = p.read_bytes()
        if p.name == "prunejax.json":
            record = json.loads(data)
            record.pop("seconds", None)
            data = json.dumps(record, sort_keys=True).encode()
        out[p.name] = data
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--method", default="sparsegpt")
    ap.add_argument("--ratio", default="0.5")
    ap.add_argument("--devices", type=int, default=2, help="global device count")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--calib-seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    prune = ["prune", "--model", args.model, "--method", args.method, "--ratio", args.ratio, "--calib", args.calib]
    prune += ["--calib-samples", str(args.calib_samples), "--calib-seq-len", str(args.calib_seq_len)]
    prune += ["--batch-size", str(args.batch_size), "--overwrite"]
    layouts = {
        f"1 process x {args.devices} devices": (1, args.devices),
        f"{args.processes} processes x {args.devices // args.processes} devices": (
            args.processes,
            args.devices // args.processes,
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in layouts}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        outs = {k: os.path.join(tmp, str(i)) for i, k in enumerate(layouts)}
        for r in range(args.repeats):
            for name, (p, d) in layouts.items():  # interleaved
                loads.append(os.getloadavg()[0])
                times[name].append(run(prune, p, d, outs[name]))
                print(f"repeat {r + 1}: {name}: {times[name][-1]:.1f} s (load {loads[-1]:.2f})", flush=True)
        first, second = (model_bytes(o) for o in outs.values())
        same = first == second
    print(f"\n{args.method} {args.ratio}, {args.calib_samples} x {args.calib_seq_len} calibration, {args.model}")
    print(f"load average before each run: {min(loads):.2f}-{max(loads):.2f}; MODEL_DIRs byte-equal: {same}")
    print("| layout | median s | min-max s |\n|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.1f} | {min(ts):.1f}-{max(ts):.1f} |")
    if not same:
        raise SystemExit("the two layouts wrote different MODEL_DIRs")


if __name__ == "__main__":
    main()
