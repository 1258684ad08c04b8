"""Whole training runs side by side: `prunejax train` against the same run in torch (`torch_train.py`),
each from process start to its final model, compilation and imports included.

  python benchmarks/whole_run.py --model-config SHAPE.yaml --data DATA_DIR --tokens 150k --repeats 5
  python benchmarks/whole_run.py --init MODEL_DIR --data DATA_DIR --tokens 60k --repeats 5

`--model-config` trains a random init of the shape (each side its own init: the tiny study's parent),
`--init` retrains a MODEL_DIR's weights (both sides start from the same weights: a retrain stage).

Each repeat runs both sides once, one after the other, alternating which goes first
(`protocol.interleaved`); every run is a fresh process with a fresh output directory. prunejax's
persistent compile cache is off (PRUNEJAX_COMPILE_CACHE=off) unless `--prunejax-env` names one: a lone
`prunejax train` would otherwise keep its programs in ~/.cache/prunejax and every repeat after the first
would be a warm run. Prints per side the median wall time with its min-max, the final validation loss,
and the 1-minute load average read before every run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from protocol import interleaved

HERE = os.path.dirname(os.path.abspath(__file__))


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return wall, out.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-config", help="model shape YAML (HF LlamaConfig keys): random init")
    source.add_argument("--init", help="MODEL_DIR both sides start from")
    p.add_argument("--data", required=True, help="DATA_DIR")
    p.add_argument("--tokens", default="150k")
    p.add_argument("--train-config", default="configs/train/tiny.yaml", help="prunejax side; the torch side mirrors it")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--prunejax-env", action="append", default=[], help="KEY=VALUE for the prunejax side")
    args = p.parse_args()

    work = tempfile.mkdtemp(prefix="whole_run_")
    base = {**os.environ, "JAX_PLATFORMS": "cpu"}
    jax_env = {**base, "PRUNEJAX_COMPILE_CACHE": "off", **dict(kv.split("=", 1) for kv in args.prunejax_env)}
    if args.init:
        source_args = (["--init", args.init], ["--init", args.init])
    else:
        source_args = (["--scratch", args.model_config], ["--model-config", args.model_config])
    sides = {
        "prunejax": (
            [sys.executable, "-m", "prunejax.cli", "train", "--config", args.train_config, *source_args[0],
             "--data", args.data, "--tokens", args.tokens, "--no-progress"],
            jax_env,
        ),
        "torch": (
            [sys.executable, os.path.join(HERE, "torch_train.py"), *source_args[1],
             "--data", args.data, "--tokens", args.tokens],
            base,
        ),
    }  # fmt: skip
    loads: list[float] = []
    results: dict[str, str] = {}
    runs = {name: 0 for name in sides}

    def side(name: str):  # type: ignore[no-untyped-def]
        def once() -> None:
            cmd, env = sides[name]
            out = os.path.join(work, f"{name}-{runs[name]}")
            loads.append(os.getloadavg()[0])
            wall, stdout = run([*cmd, "--out", out], env)
            results[name] = stdout.strip().splitlines()[-1]
            print(f"repeat {runs[name]} {name:8s} {wall:6.2f} s  (load average {loads[-1]:.2f})", flush=True)
            runs[name] += 1
            shutil.rmtree(out)

        return once

    try:
        walls = interleaved({name: side(name) for name in sides}, args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average before runs: {min(loads):.2f}-{max(loads):.2f}")
    for name, w in walls.items():
        med = statistics.median(w)
        print(f"{name:8s} median {med:6.2f} s  (min {min(w):.2f}, max {max(w):.2f})  last: {results[name][:200]}")
    ratio = statistics.median(walls["torch"]) / statistics.median(walls["prunejax"])
    print(f"prunejax speed relative to torch (torch wall / prunejax wall): {ratio:.2f}x")
    print(json.dumps({"walls": walls, "loads": loads}))


if __name__ == "__main__":
    main()
