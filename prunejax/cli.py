"""The `prunejax` command: one verb per pipeline stage, each a thin wrapper over an importable function."""

from __future__ import annotations

import importlib
import sys

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
    run = importlib.import_module(VERBS[verb]).main
    try:
        return run(rest)
    except (ConfigError, CheckpointError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"prunejax {verb}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: the shell's 128 + SIGINT, no traceback
        print(f"prunejax {verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
