#!/usr/bin/env python3
"""Ahead-of-time compile of MaxText's training step for a TPU topology, on a CPU-only host.

Runs inside benchmarks/maxtext/.venv-maxtext (see setup.sh). It drives MaxText's own
``maxtext.trainers.pre_train.train_compile.main`` (the ``train_compile`` entry point of
maxtext 0.2.5) unchanged, except that its ``jit_and_compile`` helper is wrapped so that the
compiled executable is handed back to us.  From it we record

  * per-chip memory from XLA's memory analysis (``compiled.memory_analysis()``),
  * the wall time of the lower+compile call and of the XLA compile alone,
  * peak host RAM of this process (``getrusage(RUSAGE_SELF).ru_maxrss``),
  * the optimized HLO text (``compiled.as_text()``) into ``<out>/hlo/<name>.hlo.txt``,

and write ``<out>/<name>.json``.

Usage:
  .venv-maxtext/bin/python benchmarks/maxtext/compile.py --name v5p64_pdb16 \
      --out benchmarks/maxtext/results -- model_name=llama3.1-8b compile_topology=v5p-64 ...

Every argument after ``--`` is passed to MaxText's config parser as a ``key=value`` override
of the packaged ``configs/base.yml``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import sys
import time
import traceback

# Must be set before jax / libtpu are imported.
# JAX_PLATFORMS=cpu: the host has no TPU; the TPU topology is built by libtpu's compiler
#   (jax.experimental.topologies.get_topology_desc), which works without a TPU device.
# TPU_SKIP_MDS_QUERY=1: stops libtpu from asking the GCE metadata server for TPU info.
# DECOUPLE_GCLOUD=TRUE: maxtext's switch to stub out optional Google Cloud clients,
#   which setup.sh does not install.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("DECOUPLE_GCLOUD", "TRUE")

GIB = 1024**3


def _versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("maxtext", "jax", "jaxlib", "libtpu", "flax", "optax", "tokamax", "orbax-checkpoint"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _mem_fields(stats) -> dict:
    names = (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "temp_size_in_bytes",
        "alias_size_in_bytes",
        "generated_code_size_in_bytes",
        "host_argument_size_in_bytes",
        "host_output_size_in_bytes",
        "host_temp_size_in_bytes",
        "host_alias_size_in_bytes",
        "host_generated_code_size_in_bytes",
        "peak_memory_in_bytes",
    )
    raw = {n: getattr(stats, n, None) for n in names}
    raw = {k: (int(v) if v is not None else None) for k, v in raw.items()}
    # Same formula as maxtext.utils.max_utils.print_compiled_memory_stats.
    total = (
        raw["argument_size_in_bytes"]
        + raw["output_size_in_bytes"]
        + raw["temp_size_in_bytes"]
        - raw["alias_size_in_bytes"]
    )
    gib = {
        "arguments_gib": raw["argument_size_in_bytes"] / GIB,
        "outputs_gib": raw["output_size_in_bytes"] / GIB,
        "temporaries_gib": raw["temp_size_in_bytes"] / GIB,
        "aliased_gib": raw["alias_size_in_bytes"] / GIB,
        "generated_code_gib": (raw["generated_code_size_in_bytes"] or 0) / GIB,
        "total_gib": total / GIB,
    }
    if raw.get("peak_memory_in_bytes"):
        gib["peak_memory_gib"] = raw["peak_memory_in_bytes"] / GIB
    return {"bytes": raw, "total_bytes": total, "gib": gib}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True, help="configuration name (file stem)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--no-hlo", action="store_true", help="do not write the optimized HLO text")
    ap.add_argument("overrides", nargs="*", help="MaxText key=value options (after --)")
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    hlo_dir = os.path.join(args.out, "hlo")
    os.makedirs(hlo_dir, exist_ok=True)
    json_path = os.path.join(args.out, f"{args.name}.json")
    hlo_path = os.path.join(hlo_dir, f"{args.name}.hlo.txt")

    t_start = time.perf_counter()
    import jax  # noqa: F401  (after the environment above)
    import jax.stages
    from maxtext.trainers.pre_train import train_compile

    t_import = time.perf_counter() - t_start

    captured: dict = {}

    # Time the XLA compile alone (Lowered.compile) in addition to lower+compile.
    orig_lowered_compile = jax.stages.Lowered.compile

    def timed_lowered_compile(self, *a, **kw):
        t0 = time.perf_counter()
        try:
            return orig_lowered_compile(self, *a, **kw)
        finally:
            captured.setdefault("xla_compile_s", []).append(time.perf_counter() - t0)

    orig_jit_and_compile = train_compile.jit_and_compile

    def capturing_jit_and_compile(*a, **kw):
        t0 = time.perf_counter()
        compiled = orig_jit_and_compile(*a, **kw)
        captured["lower_and_compile_s"] = time.perf_counter() - t0
        captured["compiled"] = compiled
        return compiled

    train_compile.jit_and_compile = capturing_jit_and_compile
    jax.stages.Lowered.compile = timed_lowered_compile

    record = {
        "name": args.name,
        "date_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "host": {
            "nproc": os.cpu_count(),
            "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
            "platform": platform.platform(),
        },
        "env": {
            k: os.environ.get(k)
            for k in ("JAX_PLATFORMS", "TPU_SKIP_MDS_QUERY", "DECOUPLE_GCLOUD", "LIBTPU_INIT_ARGS", "XLA_FLAGS")
        },
        "versions": _versions(),
        "maxtext_options": list(args.overrides),
        "entry_point": "maxtext.trainers.pre_train.train_compile.main",
    }

    # argv[0] = program, argv[1] = config file (the packaged base.yml), rest = overrides.
    base_yml = os.path.join(os.path.dirname(train_compile.__file__), "..", "..", "configs", "base.yml")
    base_yml = os.path.normpath(base_yml)
    argv = ["train_compile", base_yml, *args.overrides]
    record["maxtext_argv"] = argv

    t0 = time.perf_counter()
    status = "ok"
    try:
        train_compile.main(argv)
    except Exception as e:  # pylint: disable=broad-except
        status = "error"
        record["error"] = f"{type(e).__name__}: {e}"[:20000]
        record["traceback"] = traceback.format_exc()[-20000:]
        traceback.print_exc()
    record["train_compile_main_s"] = time.perf_counter() - t0
    record["import_s"] = t_import
    record["status"] = status

    compiled = captured.get("compiled")
    if compiled is not None:
        record["lower_and_compile_s"] = captured.get("lower_and_compile_s")
        xla = captured.get("xla_compile_s", [])
        record["xla_compile_s"] = xla[-1] if xla else None
        try:
            record["memory"] = _mem_fields(compiled.memory_analysis())
        except Exception as e:  # pylint: disable=broad-except
            record["memory_error"] = repr(e)
        try:
            ca = compiled.cost_analysis()
            if isinstance(ca, list):
                ca = ca[0] if ca else {}
            keep = ("flops", "bytes accessed", "transcendentals", "optimal_seconds")
            # XLA's own totals; they count a while loop's body once (not x trip count).
            record["xla_cost_analysis"] = {k: float(v) for k, v in (ca or {}).items() if k in keep}
        except Exception as e:  # pylint: disable=broad-except
            record["cost_analysis_error"] = repr(e)
        try:
            devs = compiled.input_shardings[0]
            mesh = None
            for leaf in jax.tree_util.tree_leaves(devs):
                mesh = getattr(leaf, "mesh", None)
                if mesh is not None:
                    break
            if mesh is not None:
                record["mesh"] = {str(k): int(v) for k, v in mesh.shape.items()}
                record["num_devices"] = int(mesh.size)
                d0 = mesh.devices.flat[0]
                record["device_kind"] = getattr(d0, "device_kind", None)
        except Exception as e:  # pylint: disable=broad-except
            record["mesh_error"] = repr(e)
        if not args.no_hlo:
            text = compiled.as_text()
            with open(hlo_path, "w") as f:
                f.write(text)
            record["hlo_file"] = os.path.relpath(hlo_path, os.path.dirname(json_path))
            record["hlo_chars"] = len(text)

    # ru_maxrss is in KiB on Linux.
    record["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open(json_path, "w") as f:
        json.dump(record, f, indent=1, sort_keys=False)
        f.write("\n")

    mem = record.get("memory", {}).get("gib", {})
    print(
        f"[compile.py] {args.name}: status={status} total={mem.get('total_gib', float('nan')):.2f} GiB/chip "
        f"(args {mem.get('arguments_gib', float('nan')):.2f}, out {mem.get('outputs_gib', float('nan')):.2f}, "
        f"temp {mem.get('temporaries_gib', float('nan')):.2f}, alias {mem.get('aliased_gib', float('nan')):.2f}) "
        f"compile={record.get('xla_compile_s') or float('nan'):.1f}s "
        f"lower+compile={record.get('lower_and_compile_s') or float('nan'):.1f}s "
        f"peak_rss={record['peak_rss_bytes'] / 1e9:.2f} GB -> {json_path}",
        flush=True,
    )
    return 0 if status == "ok" and compiled is not None else 1


if __name__ == "__main__":
    sys.exit(main())
