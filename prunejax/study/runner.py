"""`prunejax study CONFIG --out STUDY_DIR [--dry-run]`: run every stage of a study through the same
entry functions a user would call (`stages.STAGES`), caching each stage by the hash of its resolved spec.

STUDY_DIR holds one output per stage (`<stage id>/`), a marker per stage (`.stages/*.json`: hash,
status, time, error), a log per stage (`logs/`), `study.yaml` (the config as given) and
`stages.json` (the plan with statuses, which `prunejax report` reads). A rerun skips finished stages
and resumes interrupted ones (training resumes from its checkpoints); a failed stage is reported
and its dependents are skipped while everything else carries on. A changed config over an existing
STUDY_DIR stops before any work and names the invalidated stages (`--rerun-changed` redoes them); so does
an input read by path whose content changed (an imported parent replaced or edited in place, an edited
shard of a given DATA_DIR: see `plan.content_digest`), naming the path.

A STUDY_DIR may be on object storage (gs://): every stage writes its artifact there as its verb does
(committed directories, Orbax checkpoints, results.json objects), markers and stages.json are single
objects, each stage's log is written locally and uploaded when the stage ends, and the compile cache stays
in a local staging directory. A remote study trains every
scratch run itself (the same-shape twin reuse copies directories, which an object store cannot do
atomically).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

from prunejax import distributed, locks, runtime, storage
from prunejax.config import ConfigError
from prunejax.distributed import add_launch_args
from prunejax.study import config as study_config
from prunejax.study import plan as plan_lib
from prunejax.study.config import StudyConfig
from prunejax.study.plan import ScratchSpec, Stage
from prunejax.study.stages import STAGES, write_json
from prunejax.train.loop import Stopped


class StudyError(ValueError):
    """A study that cannot start: changed config over existing results, too little data, ..."""


class StudyInterrupted(BaseException):  # like KeyboardInterrupt: not an error of the stage
    """A stage stopped early (SIGTERM/preemption: training saved a checkpoint and returned)."""


def _marker_path(study_dir: str, stage_id: str) -> str:
    return storage.join(study_dir, ".stages", stage_id.replace("/", "__") + ".json")


def read_marker(study_dir: str, stage_id: str) -> dict[str, Any] | None:
    path = _marker_path(study_dir, stage_id)
    if not storage.exists(path):
        return None
    return json.loads(storage.read_file(path))


class Runner:
    """Runs one study's stages in order (each through its kind's function in `stages.STAGES`), caching each."""

    def __init__(self, study: StudyConfig, study_dir: str):
        self.study = study
        self.dir = storage.absolute(study_dir).rstrip("/")
        self.remote = storage.is_remote(self.dir)
        # what stays on this machine: a stage's log while it runs, and the compile cache
        self.local = storage.staging_dir(self.dir) if self.remote else self.dir
        self.stages = plan_lib.build(study)
        self.hashes = plan_lib.hashes(self.stages)
        self.by_id = {s.id: s for s in self.stages}

    # ---- paths ---------------------------------------------------------------------------
    def out(self, stage_id: str) -> str:
        if stage_id == "data" and self.study.data.data_dir:
            return storage.absolute(self.study.data.data_dir)
        return storage.join(self.dir, stage_id)

    def model_dir(self, stage_id: str) -> str:
        """The MODEL_DIR a stage produced (training runs keep theirs in `final/`)."""
        kind = self.by_id[stage_id].kind
        if kind in ("retrain", "scratch") or (kind == "parent" and self.study.parent.import_ is None):
            return storage.join(self.out(stage_id), "final")
        return self.out(stage_id)

    def finished(self, stage_id: str) -> bool:
        """Whether a training stage's MODEL_DIR is there whole (committed, on object storage)."""
        path = self.model_dir(stage_id)
        return storage.committed(path) if self.remote else os.path.isdir(path)

    # ---- scratch runs of one shape ------------------------------------------------------------
    def scratch_source(self, stage: Stage) -> str:
        """The shape a scratch run trains: a pruned model, the parent (the `once` control) or a baseline's config."""
        src = stage.deps[0]
        if self.by_id[src].kind in ("prune", "parent"):
            return self.model_dir(src)
        return storage.join(self.out(src), "config.json")

    def _scratch_key(self, stage: Stage) -> str | None:
        """What a random-init run depends on: the shape, tokens, recipe, seed and data. None for --reinit
        runs, which keep a pruned model's masks and so depend on more than the shape."""
        assert isinstance(stage.spec, ScratchSpec)
        if stage.spec.reinit:
            return None
        from prunejax import hf

        source = self.scratch_source(stage)
        cfg = hf.load_config(source if os.path.isdir(source) else os.path.dirname(source))
        spec = {k: v for k, v in plan_lib.spec_dict(stage.spec).items() if k != "reinit"}
        blob = json.dumps([cfg.to_hf_dict(), spec, self.hashes["data"]], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def scratch_twin(self, stage: Stage) -> str | None:
        """An earlier finished scratch stage that trained exactly this run (e.g. minitron-width and sheared
        reach the same shape; both depth methods keep the same number of layers)."""
        key = None if self.remote else self._scratch_key(stage)  # a remote study copies no directories
        if key is None:
            return None
        for other in self.stages:
            if other.id == stage.id:
                return None
            if other.kind != "scratch":
                continue
            marker = read_marker(self.dir, other.id)
            if marker and marker["status"] == "done" and marker["hash"] == self.hashes[other.id]:
                try:
                    if self._scratch_key(other) == key and os.path.isdir(self.model_dir(other.id)):
                        return other.id
                except (OSError, ValueError):  # its source is gone or unreadable: not a usable twin
                    continue
        return None

    # ---- bookkeeping -----------------------------------------------------------------------
    def _log_path(self, stage_id: str) -> str:
        """Process 0 logs to logs/<stage>.log, any other process i to logs/process-i/<stage>.log."""
        name = stage_id.replace("/", "__") + ".log"
        i = distributed.process_index()
        return os.path.join(self.local, "logs", *([f"process-{i}"] if i else []), name)

    def _upload_log(self, stage_id: str) -> None:
        """A remote study's stage log: the local file, uploaded whole by the process that wrote it."""
        path = self._log_path(stage_id)
        if self.remote and os.path.exists(path):
            with open(path, "rb") as f:
                storage.write_file(storage.join(self.dir, *os.path.relpath(path, self.local).split(os.sep)), f.read())

    def check_unchanged(self, rerun_changed: bool) -> None:
        """Results of another config are never mixed in: finished or half-run stages whose hash changed
        stop the run before any work (failed stages hold nothing and simply run again)."""

        def scan() -> tuple[list[str], list[str], list[str]]:
            changed, failed, moved = [], [], []
            for stage in self.stages:
                marker = read_marker(self.dir, stage.id)
                if marker is None or marker["hash"] == self.hashes[stage.id]:
                    continue
                (failed if marker["status"] == "failed" else changed).append(stage.id)
                before = marker.get("reads") or {}
                moved += [
                    f"{path} is not what stage {stage.id} read (content {before.get(path, 'unrecorded')} -> {digest})"
                    for path, digest in stage.reads.items()
                    if marker["status"] != "failed" and before.get(path) != digest
                ]
            return changed, failed, moved

        changed, failed, moved = distributed.decided("changed stages", scan)  # before process 0 drops any
        if failed:
            distributed.one_writer(
                "drop failed markers", lambda: [storage.remove_file(_marker_path(self.dir, s)) for s in failed]
            )
        if not changed:
            return
        if not rerun_changed:
            listed = "\n  ".join(changed[:30]) + (f"\n  ... and {len(changed) - 30} more" if len(changed) > 30 else "")
            inputs = "".join(f"\n  {m}" for m in moved)
            why = (
                f"results of inputs that changed since they were read:{inputs}\n"
                if moved
                else "results of a different config; "
            )
            raise StudyError(
                f"{self.dir} holds {why}these {len(changed)} stage(s) would be invalidated:\n  {listed}\n"
                "rerun with --rerun-changed to redo them, or use another --out"
            )

        def drop() -> None:
            for stage_id in changed:
                out = self.out(stage_id)
                if (self.by_id[stage_id].kind != "data" or not self.study.data.data_dir) and storage.exists(out):
                    storage.remove_tree(out)
                storage.remove_file(_marker_path(self.dir, stage_id))

        distributed.one_writer("drop changed stages", drop)

    def check_data(self) -> None:
        """Every token range of the plan must lie inside the train split."""
        from prunejax.data.store import TokenStore

        have = TokenStore(self.out("data")).num_tokens("train")
        p = self.study.parent.tokens
        need = max(
            [p + 1 + max(self.study.retrain_budgets) + 1] + [s.tokens + 1 for s in self.stages if s.kind == "scratch"]
        )
        if need > have:
            raise StudyError(
                f"the plan reads up to {need:,} training tokens but {self.out('data')} has {have:,}: "
                "lower parent.tokens / retrain_budgets or add data"
            )

    def write_index(self) -> None:
        index = []
        for s in self.stages:
            marker = read_marker(self.dir, s.id) or {}
            index.append(
                {
                    "id": s.id,
                    "kind": s.kind,
                    "deps": list(s.deps),
                    "hash": self.hashes[s.id],
                    "tokens": s.tokens,
                    "flops": s.flops,
                    "info": s.info,
                    "status": marker.get("status", "pending"),
                    "seconds": marker.get("seconds"),
                    "error": marker.get("error"),
                }
            )
        write_json(
            storage.join(self.dir, "stages.json"),
            {
                "name": self.study.name,
                "source": self.study.source,
                "parent_tokens": self.study.parent.tokens,
                "parent_import": self.study.parent.import_,
                "stages": index,
            },
        )

    def run(self, rerun_changed: bool = False, log: Callable[[str], None] = print) -> int:
        # every process builds the same plan from the same config, or none starts
        distributed.agree("study plan", hashlib.sha256(json.dumps(self.hashes, sort_keys=True).encode()).hexdigest())
        if self.remote:
            storage.check_bucket(self.dir)
        else:
            os.makedirs(self.dir, exist_ok=True)
        self.check_unchanged(rerun_changed)
        if self.study.source and storage.exists(self.study.source):  # a local or a gs:// study YAML
            config = storage.read_file(self.study.source)
            copy = storage.join(self.dir, "study.yaml")
            distributed.one_writer("study.yaml", lambda: storage.write_file(copy, config))
        # same-shape stages (all sparse retrains share the parent's shape) reuse compiled steps
        runtime.enable_compile_cache(os.path.join(self.local, ".jax_cache"))
        status: dict[str, str] = {}
        t_start = time.time()
        for i, stage in enumerate(self.stages, 1):
            head = f"[{i:3d}/{len(self.stages)}] {stage.id}"
            marker = distributed.decided(f"marker {stage.id}", functools.partial(read_marker, self.dir, stage.id))
            if marker and marker["status"] == "done":
                status[stage.id] = "done"
                log(f"{head}: done (cached)")
                continue
            blocked = [d for d in stage.deps if status.get(d) != "done"]
            if blocked:
                status[stage.id] = "skipped"  # summarized at the end: one failure can block many stages
                continue
            reads = {"reads": stage.reads} if stage.reads else {}  # what a changed input is named by, on a rerun
            write_json(_marker_path(self.dir, stage.id), {"hash": self.hashes[stage.id], "status": "running", **reads})
            t0 = time.time()
            try:
                try:
                    with stage_log(self._log_path(stage.id)):
                        STAGES[stage.kind](self, stage)  # a stage calls back for paths and twins
                finally:
                    self._upload_log(stage.id)
                if stage.kind in ("parent", "retrain", "scratch") and not self.finished(stage.id):
                    log(f"{head}: interrupted; rerun the same command to resume from its checkpoint")
                    raise StudyInterrupted(stage.id)
                if stage.kind == "data":
                    self.check_data()
                status[stage.id] = "done"
                error = None
            except Stopped:  # a trained pruning method saved a checkpoint and stopped: as train's interruption
                log(f"{head}: interrupted; rerun the same command to resume from its checkpoint")
                raise StudyInterrupted(stage.id) from None
            except Exception as e:  # noqa: BLE001 - one failed stage must not stop the study
                status[stage.id] = "failed"
                error = f"{type(e).__name__}: {e}"
                if isinstance(e, StudyError):
                    write_json(
                        _marker_path(self.dir, stage.id),
                        {"hash": self.hashes[stage.id], "status": "failed", "error": error, **reads},
                    )
                    raise
            # a stage that failed on some processes only would leave them out of step: stop instead
            distributed.agree(f"the outcome of stage {stage.id}", status[stage.id])
            seconds = round(time.time() - t0, 1)
            write_json(
                _marker_path(self.dir, stage.id),
                {"hash": self.hashes[stage.id], "status": status[stage.id], "seconds": seconds, "error": error} | reads,
            )
            log(f"{head}: {status[stage.id]} in {seconds:.1f}s" + (f" — {error}" if error else ""))
        self.write_index()
        failed = [k for k, v in status.items() if v == "failed"]
        skipped = [k for k, v in status.items() if v == "skipped"]
        done = len(status) - len(failed) - len(skipped)
        log(
            f"study {self.study.name}: {done}/{len(status)} stages done in {time.time() - t_start:.0f}s"
            + (f"; failed: {', '.join(failed)}" if failed else "")
            + (f"; {len(skipped)} stages skipped because a stage they need failed" if skipped else "")
        )
        return 1 if failed or skipped else 0


@contextlib.contextmanager
def stage_log(path: str):  # type: ignore[no-untyped-def]
    """Send a stage's output (progress bars included) to its log file; the console keeps one line per stage."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a", buffering=1) as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            yield
        except BaseException as e:
            print(f"stage failed: {type(e).__name__}: {e}", file=f)
            raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunejax study", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="study YAML (configs/study/*.yaml)")
    parser.add_argument("--out", required=True, help="STUDY_DIR (an existing one is resumed)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan with tokens and FLOPs, run nothing")
    parser.add_argument("--rerun-changed", action="store_true", help="redo stages whose config changed")
    parser.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    add_launch_args(parser)
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    study = study_config.load(args.config)
    runner = Runner(study, args.out)
    if args.dry_run:
        print(plan_lib.describe(runner.stages))
        return 0
    with locks.hold(runner.dir):  # one writer per STUDY_DIR, its report included
        rc = _run(runner, args)
    if rc == 0 and runner.remote:  # a finished study on object storage leaves no staging directory behind
        shutil.rmtree(runner.local, ignore_errors=True)
    return rc


def _run(runner: Runner, args: argparse.Namespace) -> int:
    try:
        rc = runner.run(rerun_changed=args.rerun_changed)
    except StudyError as e:
        raise ConfigError(str(e)) from None
    except StudyInterrupted as e:  # a stage saved a checkpoint and stopped (SIGTERM, preemption): no traceback
        print(f"study stopped during {e}; run the same command again to resume", file=sys.stderr)
        return 130
    if not args.no_report:
        from prunejax.study import report

        paths = distributed.one_writer("report", lambda: report.write_report(runner.dir))
        if paths:
            print(f"report: {paths['markdown']}")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
