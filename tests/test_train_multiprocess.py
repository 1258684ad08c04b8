"""Two processes on localhost (CPU collectives, 4 devices each) reproduce the single-process losses on 8 devices."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import TRAIN_HF

from prunejax.data.store import write_data_dir
from prunejax.train.metrics import read_metrics
from prunejax.train.run import train

MODEL = {"vocab_size": 256, **TRAIN_HF}
OVERRIDES = ["seq_len=32", "global_batch=8", "val_batches=1", "peak_tflops=1", "ckpt_every=2"]
TOKENS = 5 * 8 * 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    rng = np.random.default_rng(0)
    chunks = {"train": [rng.integers(1, 256, 20_000)], "validation": [rng.integers(1, 256, 2_000)]}
    data = write_data_dir(str(tmp_path / "data"), chunks, vocab_size=256, eos_id=0)
    model = tmp_path / "model.yaml"
    model.write_text(yaml.safe_dump(MODEL))

    single = str(tmp_path / "single")
    train(single, data_dir=data, tokens=TOKENS, scratch=str(model), overrides=OVERRIDES, progress=False)

    multi = str(tmp_path / "multi")
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    argv = [sys.executable, "-m", "prunejax.cli", "train", "--scratch", str(model), "--data", data]
    argv += ["--tokens", str(TOKENS), "--out", multi, "--no-progress", *OVERRIDES]
    argv += ["--coordinator", f"localhost:{port}", "--num-processes", "2"]
    procs = [
        subprocess.Popen([*argv, "--process-id", str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=280)[0].decode() for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]

    a, b = read_metrics(single), read_metrics(multi)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        key = "loss" if "loss" in ra else "val_loss"
        assert rb[key] == pytest.approx(ra[key], rel=1e-6), ra["step"]
    assert sorted(os.listdir(os.path.join(multi, "checkpoints")))[-1] == "5"
    assert os.path.exists(os.path.join(multi, "final", "model.safetensors"))
