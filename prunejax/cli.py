"""The `prunejax` command: one verb per pipeline stage, each a thin wrapper over an importable function."""

from __future__ import annotations

import importlib
import os
import sys

from prunejax import distributed, runtime
from prunejax.config import ConfigError
from prunejax.hf import CheckpointError

# verb -> module whose `main(argv) -> int` implements it (imported only when used).
VERBS: dict[str, str] = {
    "convert": "prunejax.convert",
    "eval": "prunejax.evaluate.cli",
    "prune": "prunejax.prune.cli",
    "data": "prunejax.data.cli",
    "train": "prunejax.train.cli",
    "study": "prunejax.study.runner",
    "report": "prunejax.study.report",
    "compile-check": "prunejax.compile_check",
    "cpu-gemm": "prunejax.kernels.cpu_gemm",
}

USAGE = "usage: prunejax VERB [options]   (prunejax VERB --help for each)\nverbs: "


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + ", ".join(VERBS))
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"prunejax: unknown verb {verb!r}; valid verbs: {', '.join(VERBS)}", file=sys.stderr)
        return 2
    for arg in rest:  # argparse hands `--opt=--` to the verb as [] without calling the option's type
        if arg.startswith("--") and arg.endswith("=--"):
            print(f"prunejax {verb}: error: argument {arg[:-3]}: expected a value, got '--'", file=sys.stderr)
            return 2
    runtime.tune_cpu_runtime()  # before any JAX work (the CPU dispatch mode is fixed when the backend starts)
    run = importlib.import_module(VERBS[verb]).main
    rc = 1
    try:
        # before the verb does any JAX work; a study joins here once for all of its stages
        distributed.join_from_args(distributed.launch_args(rest))
        cache = runtime.default_cache_dir()
        # a study keeps its own, in STUDY_DIR; compile-check's topology executables cannot be loaded back
        if cache and verb not in ("study", "compile-check") and distributed.process_count() == 1:
            runtime.enable_compile_cache(cache)
        distributed.check_launch(verb, rest, _config_files(rest))
        return run(rest)
    except (ConfigError, CheckpointError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"{_where(verb)}: error: {e}", file=sys.stderr)
        _quiet_background_threads()
    except KeyboardInterrupt:  # Ctrl-C: the shell's 128 + SIGINT, no traceback
        print(f"{_where(verb)}: interrupted", file=sys.stderr)
        rc = 130
    except SystemExit as e:  # argparse (--help, a bad flag): it printed its own message
        if distributed.process_count() > 1:
            distributed.abort(e.code if isinstance(e.code, int) else 1)
        raise
    except BaseException as e:
        if distributed.process_count() > 1:
            import traceback

            traceback.print_exc()
            print(f"{_where(verb)}: error: {type(e).__name__}; stopped: {distributed.dead_peers()}", file=sys.stderr)
            distributed.abort(1)
        raise
    if distributed.process_count() > 1:
        distributed.abort(rc)  # a clean shutdown would wait for peers that may be stuck in a collective
    return rc


def _quiet_background_threads() -> None:
    """After the verb's one error message, threads still winding down (Orbax's async save meeting the same
    dead store) add nothing the user needs: no more log lines or thread tracebacks from this process."""
    import logging
    import threading

    logging.disable(logging.CRITICAL)
    threading.excepthook = lambda args: None


def _where(verb: str) -> str:
    return f"prunejax {verb}" + (f" [process {distributed.process_index()}]" if distributed.joined() else "")


def _config_files(argv: list[str]) -> list[str]:
    """Config files named on the command line: every process must read the same contents."""
    return [a for a in argv if a.endswith((".yaml", ".yml", ".json")) and os.path.isfile(a)]


if __name__ == "__main__":
    sys.exit(main())
