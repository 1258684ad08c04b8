"""The launcher files in tpu_scripts/ are well formed and their prunejax commands parse, with no cloud."""

import glob
import re
import shlex
import subprocess

import yaml

from prunejax.study import runner

# SkyPilot task YAML fields (docs.skypilot.co, "SkyPilot YAML"); anything else is a typo SkyPilot rejects.
TASK_KEYS = {"name", "workdir", "num_nodes", "resources", "envs", "secrets", "file_mounts", "setup", "run", "config"}
RESOURCE_KEYS = {
    "infra", "cloud", "region", "zone", "accelerators", "accelerator_args", "cpus", "memory", "instance_type",
    "use_spot", "job_recovery", "disk_size", "disk_tier", "ports", "image_id", "labels", "any_of", "ordered",
}  # fmt: skip


def test_shell_wrappers_parse():
    for path in sorted(glob.glob("tpu_scripts/*.sh")):
        subprocess.run(["bash", "-n", path], check=True)


def test_skypilot_study_task_is_well_formed_and_its_command_runs_dry(tmp_path, capsys):
    task = yaml.safe_load(open("tpu_scripts/sky_study.yaml"))
    assert set(task) <= TASK_KEYS, set(task) - TASK_KEYS
    assert set(task["resources"]) <= RESOURCE_KEYS, set(task["resources"]) - RESOURCE_KEYS
    assert re.fullmatch(r"tpu-v[45]p?-\d+", task["resources"]["accelerators"])
    assert task["resources"]["use_spot"] and task["resources"]["job_recovery"]["strategy"]
    assert "pip install -q -e '.[tpu]'" in task["setup"]
    line = next(x for x in task["run"].splitlines() if "prunejax study" in x)
    assert line.startswith("PRUNEJAX_DISTRIBUTED=1 ")  # every host joins; JAX finds the slice itself
    env = {**task["envs"], "NAME": "dry"}
    argv = shlex.split(re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: env[m.group(1) or m.group(2)], line))
    verb_argv = argv[argv.index("study") + 1 :]
    out = verb_argv.index("--out") + 1
    assert verb_argv[out] == "gs://YOUR-BUCKET/dry"  # the study writes to the bucket itself, no mount
    verb_argv[out] = str(tmp_path / "study")  # a dry run needs no bucket: the same plan on local disk
    assert runner.main([*verb_argv, "--dry-run"]) == 0  # the real parser, config and plan, no work
    assert "stages" in capsys.readouterr().out.splitlines()[-1]
    assert "file_mounts" not in task  # prunejax reads and writes gs:// directly
    assert re.search(r"python3\.1[1-9] -m venv", task["setup"])  # pyproject's requires-python, not the image's 3.10
