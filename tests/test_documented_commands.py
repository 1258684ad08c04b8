"""Every `prunejax` command written down for a reader runs as written, and every link there leads somewhere.

Commands are read from README.md and docs/*.md (code blocks and inline code with options), the comment
headers of configs/**/*.yaml, tpu_scripts/ (the scripts' comments and commands, the wrappers `run.sh NAME
VERB ...` and `gpu_multinode.sh VERB ...` read as the `prunejax VERB ...` they run, and the `setup`/`run`
blocks of the SkyPilot task YAMLs) and the module docstrings of prunejax/. Each one is parsed by its
verb's real argument parser (`build_parser()`): an unknown flag, a missing required argument or a
positional the verb does not take fails here; a train config a command names is loaded with its
key=value overrides. Usage synopses are expanded: `[a | b]` gives one variant without the group and
one per alternative, `(a | b)` one per alternative; `X...` and `...` mark elided arguments (then
required arguments may be missing, but every flag must exist). A few commands that run in seconds on
CPU also run for real, in a scratch directory. The README's Python calls public names with
arguments their signatures take, and the Markdown links and repository paths of README.md and docs/
exist.
"""

from __future__ import annotations

import argparse
import ast
import glob
import importlib
import inspect
import itertools
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import prunejax
from prunejax.cli import VERBS
from prunejax.train import config as train_config

ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER = re.compile(r"^\$\{?\w+\}?$|^[A-Z][A-Z0-9_]*$")  # $VAR, ${VAR}, MODEL_DIR, N
GROUP = re.compile(r"\[([^\[\]()]*)\]|\(([^\[\]()]*)\)")  # an innermost [optional] or (required) group


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    text: str  # as written, continuation lines joined


def _strip_comment(line: str) -> str:
    """`line` less a trailing shell comment (a # after whitespace, outside quotes)."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _logical_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """(first line number, text) with backslash continuations joined."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for n, line in lines:
        line = _strip_comment(line)
        if pending is not None:
            n, line = pending[0], pending[1] + " " + line.strip()
        if line.endswith("\\"):
            pending = (n, line[:-1].rstrip())
            continue
        pending = None
        out.append((n, line))
    if pending is not None:
        out.append(pending)
    return out


def _mentions_prunejax(text: str) -> bool:
    return re.search(r"(^|[\s/;&\"'])prunejax\s+[a-z]", text) is not None


def markdown_files() -> list[Path]:
    """README.md and the hand-written docs/*.md (the generated reports live in docs/*/)."""
    return [ROOT / "README.md", *sorted(ROOT.glob("docs/*.md"))]


def code_blocks(path: Path, languages: tuple[str, ...]) -> list[list[tuple[int, str]]]:
    """The fenced code blocks of a Markdown file in one of `languages`, as (line number, line) lists."""
    blocks: list[list[tuple[int, str]]] = []
    block: list[tuple[int, str]] | None = None
    fenced = False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            if not fenced:
                block = [] if line[3:].strip() in languages else None
            else:
                blocks += [block] if block is not None else []
                block = None
            fenced = not fenced
            continue
        if block is not None:
            block.append((n, line))
    return blocks


def markdown_commands(path: Path) -> list[Command]:
    rel = path.relative_to(ROOT)
    found = [
        Command(f"{rel}:{k}", t)
        for block in code_blocks(path, ("bash", "sh", "shell"))
        for k, t in _logical_lines(block)
        if _mentions_prunejax(t)
    ]
    in_code = False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            in_code = not in_code
            continue
        if not in_code:
            for span in re.findall(r"`([^`]+)`", line):
                if span.startswith("prunejax ") and " --" in span:  # a command, not a verb's name
                    found.append(Command(f"{rel}:{n}", span))
    return found


def readme_commands() -> list[Command]:
    return [c for path in markdown_files() for c in markdown_commands(path)]


# a comment line that is a command, not prose mentioning one: env assignments, `make X &&`, then prunejax
COMMENTED = re.compile(r"^\s*(\w+=\S*\s+)*(make [\w-]+ && )?\S*prunejax [a-z]")
# The wrappers in tpu_scripts/ run `prunejax VERB ARGS`: `run.sh NAME VERB ARGS` (as tpu_scripts/run.sh or
# "$here/run.sh" "$NAME") and `gpu_multinode.sh VERB ARGS`; a line calling one is read as that command.
WRAPPERS = [
    re.compile(r"""(?<![\w/])"?(?:\$here|\S*tpu_scripts)/run\.sh"? +("[^"]*"|\S+) +"""),
    re.compile(r"""(?<![\w/])"?(?:\$here|\S*tpu_scripts)/gpu_multinode\.sh"? +"""),
]


def unwrap(line: str) -> str:
    for wrapper in WRAPPERS:
        line = wrapper.sub("prunejax ", line)
    return line


def comment_commands(path: Path) -> list[Command]:
    """Commands in the `#` comments of a file (`#   prunejax ...`, with continuation lines)."""
    rel = path.relative_to(ROOT)
    lines = enumerate(path.read_text().splitlines(), 1)
    comments = [(n, unwrap(line.lstrip()[1:])) for n, line in lines if line.lstrip().startswith("#")]
    return [Command(f"{rel}:{n}", t) for n, t in _logical_lines(comments) if COMMENTED.match(t)]


def script_commands(path: Path) -> list[Command]:
    """Commands a script runs (comments stripped, wrappers unwrapped) and the usage lines in its comments."""
    rel = path.relative_to(ROOT)
    numbered = [(n, unwrap(line)) for n, line in enumerate(path.read_text().splitlines(), 1)]
    code = [Command(f"{rel}:{n}", t) for n, t in _logical_lines(numbered) if _mentions_prunejax(t)]
    return code + comment_commands(path)


def task_commands(path: Path) -> list[Command]:
    """Commands of a SkyPilot task YAML: its `setup` and `run` blocks (shell scripts), and its comments."""
    rel = path.relative_to(ROOT)
    task = yaml.safe_load(path.read_text()) or {}
    text = path.read_text().splitlines()
    found = []
    for key in ("setup", "run"):
        if not task.get(key):
            continue
        start = next(n for n, line in enumerate(text, 1) if line.startswith(f"{key}:"))
        numbered = [(start + k, unwrap(line)) for k, line in enumerate(task[key].splitlines(), 1)]
        found += [Command(f"{rel}:{n} ({key})", t) for n, t in _logical_lines(numbered) if _mentions_prunejax(t)]
    return found + comment_commands(path)


def docstring_commands(path: Path) -> list[Command]:
    """Commands in a module docstring: lines that start with `prunejax VERB` (inside backticks or not),
    continued by the more-indented lines below that start with an option or a group."""
    import ast

    doc = ast.get_docstring(ast.parse(path.read_text()), clean=False) or ""
    rel = path.relative_to(ROOT)
    lines = doc.splitlines()
    commands = []
    for n, line in enumerate(lines):
        m = re.match(r"(\s*)`?(prunejax [a-z-]+(?: .*)?)", line)
        text = m.group(2).split("`")[0].rstrip(":. ") if m else ""
        if not text or re.fullmatch(r"prunejax [a-z-]+( [a-z|-]+)?", text):  # a verb's name, not a command
            continue
        indent = len(m.group(1))
        for more in lines[n + 1 :]:
            if len(more) - len(more.lstrip()) <= indent or not more.lstrip().startswith(("-", "[", "(")):
                break
            text += " " + more.strip()
        commands.append(Command(f"{rel}:docstring line {n + 1}", text))
    return commands


def all_commands() -> list[Command]:
    found = readme_commands()
    for path in sorted(ROOT.glob("configs/**/*.yaml")):
        found += comment_commands(path)
    for path in sorted(ROOT.glob("tpu_scripts/*")):
        found += task_commands(path) if path.suffix in (".yaml", ".yml") else script_commands(path)
    for path in sorted(ROOT.glob("prunejax/**/*.py")):
        found += docstring_commands(path)
    return list(dict.fromkeys(found))


def variants(text: str) -> list[str]:
    """Every reading of a synopsis's [optional] and (alternative) groups, innermost first."""
    m = GROUP.search(text)
    if m is None:
        return [text]
    optional = m.group(1) is not None
    alternatives = [a.strip() for a in (m.group(1) if optional else m.group(2)).split("|")]
    choices = ([""] if optional else []) + alternatives
    out = []
    for choice in choices:
        out += variants(text[: m.start()] + choice + text[m.end() :])
    return list(dict.fromkeys(out))


def invocations(text: str) -> list[list[str]]:
    """The argv (after the verb word `prunejax`) of every prunejax call in one shell line."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    words = list(lexer)
    calls = []
    for is_sep, group in itertools.groupby(words, key=lambda w: w in (";", "&", "&&", "|", "||")):
        if is_sep:
            continue
        group = list(group)
        for i, w in enumerate(group):
            if w == "prunejax" or w.endswith("/prunejax"):
                calls.append(group[i + 1 :])
                break
    return calls


def _sample(action) -> str:
    """A valid stand-in for a placeholder value of `action` (MODEL_DIR, $N, R)."""
    if action.choices:
        return str(next(iter(action.choices)))
    return "1" if action.type is not None else "X"


def check_parses(argv: list[str]) -> argparse.Namespace | None:
    """Parse `argv` (verb first) with the verb's real parser and return what it parsed; raises AssertionError
    with argparse's message."""
    assert argv, "prunejax with no verb"
    verb, rest = argv[0], argv[1:]
    if verb.startswith("$"):  # the verb is the script's argument (tpu_scripts/run.sh): nothing to check
        return None
    assert verb in VERBS, f"unknown verb {verb!r}"
    parser = importlib.import_module(VERBS[verb]).build_parser()
    elided = any(w == "..." or w.endswith("...") or w in ("$@", '"$@"') for w in rest)
    rest = [w.removesuffix("...") for w in rest if w not in ("...", "$@")]
    rest = [w for w in rest if w]
    sub = parser
    subparsers = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    if subparsers and rest and rest[0] in subparsers[0].choices:
        sub = subparsers[0].choices[rest[0]]
    options = sub._option_string_actions
    for i in range(1, len(rest)):  # placeholders after a typed option get a value of that type
        if PLACEHOLDER.match(rest[i]) and rest[i - 1] in options:
            rest[i] = _sample(options[rest[i - 1]])
    if elided:
        for p in (parser, sub):
            for action in p._actions:
                action.required = False
            for group in p._mutually_exclusive_groups:
                group.required = False
    errors: list[str] = []
    parser.error = sub.error = lambda message: errors.append(message) or (_ for _ in ()).throw(SystemExit(2))
    try:
        if elided:
            namespace, unknown = parser.parse_known_args(rest)
            flags = [u for u in unknown if u.startswith("--")]
            assert not flags, f"unknown flag(s) {flags}"
        else:
            namespace = parser.parse_args(rest)
    except SystemExit:
        raise AssertionError(f"prunejax {verb}: {'; '.join(errors) or 'argparse exited'}") from None
    return namespace


def check_train_config(verb: str, namespace: argparse.Namespace | None) -> None:
    """A train config named by `train --config` or `compile-check --train-config` (a file in this repository)
    loads with the command's key=value overrides, and its mesh sizes can form a mesh."""
    path = getattr(namespace, {"train": "config", "compile-check": "train_config"}.get(verb, "-"), None)
    if not path or not (ROOT / path).is_file():
        return
    overrides = [o for o in namespace.overrides if "=" in o]
    try:
        cfg = train_config.load(str(ROOT / path), overrides)
    except Exception as e:
        raise AssertionError(f"prunejax {verb}: {path} with {overrides}: {e}") from None
    sizes = [cfg.mesh_data, cfg.mesh_fsdp, cfg.mesh_tp]
    assert sizes.count(-1) <= 1, f"{path} with {overrides}: mesh sizes {sizes}: sharding.make_mesh allows one -1"


COMMANDS = all_commands()


def test_the_docs_hold_the_commands_this_test_knows():
    """The extraction itself: if it silently found nothing, every other test here would pass vacuously."""
    where = {c.where.split(":")[0] for c in COMMANDS}
    assert {"README.md", "configs/train/tiny.yaml", "configs/prune/sheared_tiny.yaml"} <= where
    assert any(w.startswith("docs/") for w in where)
    for script in ("run.sh", "run_study.sh", "gpu_multinode.sh", "sky_study.yaml"):
        assert f"tpu_scripts/{script}" in where, script
    assert any(c.where.endswith("(run)") and " study " in c.text for c in COMMANDS)  # the SkyPilot task's command
    assert any(c.where.startswith("tpu_scripts/run_study.sh") and "--dry-run" in c.text for c in COMMANDS)
    assert any(w.startswith("prunejax/") for w in where)
    assert len(COMMANDS) >= 25


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.where)
def test_documented_command_parses(command):
    calls = [argv for v in variants(command.text) for argv in invocations(v)]
    assert calls, f"{command.where}: no prunejax call found in {command.text!r}"
    for argv in calls:
        try:
            check_train_config(argv[0], check_parses(argv))
        except AssertionError as e:
            raise AssertionError(f"{command.where}: {command.text!r}\n  as {shlex.join(argv)}\n  {e}") from None


def test_a_drifted_command_fails():
    """The check can fail: a stray positional and --config for --sheared-config (sheared_tiny.yaml's old header),
    a misspelt flag in an elided command, a missing required flag."""
    with pytest.raises(AssertionError, match="unrecognized arguments"):
        check_parses(shlex.split("prune --model M TINY --method sheared --ratio 0.5 --config x.yaml --out O"))
    with pytest.raises(AssertionError, match="unknown flag"):
        check_parses(shlex.split("prune ... --coordinator 10.0.0.1:8476 --num-procs 4"))
    with pytest.raises(AssertionError, match="required"):
        check_parses(shlex.split("eval --data D --out r.json"))
    # the gpu_multinode.sh header's old example: mesh_data defaults to -1 too, so two axes took "the rest"
    with pytest.raises(AssertionError, match="one -1"):
        check_train_config(
            "train", check_parses(shlex.split("train --config configs/train/smollm2.yaml mesh_fsdp=-1 ..."))
        )
    with pytest.raises(AssertionError, match="unknown train config key"):
        check_train_config("train", check_parses(shlex.split("train --config configs/train/tiny.yaml mesh_fdsp=2 ...")))
    assert unwrap('"$here/run.sh" "$NAME" study "$CONFIG" --out "$OUT"') == 'prunejax study "$CONFIG" --out "$OUT"'
    assert unwrap("N=4 tpu_scripts/gpu_multinode.sh train --out R") == "N=4 prunejax train --out R"
    assert variants("a [--x 1 | --y 2] (--p | --q)") == ["a  --p", "a  --q", "a --x 1 --p", "a --x 1 --q"] + [
        "a --y 2 --p",
        "a --y 2 --q",
    ]


def test_make_targets_named_in_the_readme_exist():
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    named = set(re.findall(r"\bmake ([a-z][\w-]*)", (ROOT / "README.md").read_text()))
    assert named and named <= targets, f"README names make targets the Makefile lacks: {named - targets}"


# Commands run for real: found verbatim in the docs (so an edit there reaches this test), cheap on CPU.
RUN = [
    "prunejax data train-tokenizer --corpus kjv --vocab-size 512 --out tok512",
    "prunejax data prepare --corpus kjv --tokenizer tok512 --out data/kjv",
    "prunejax study configs/study/tiny.yaml --out runs/tiny --dry-run",
]


def test_documented_commands_run(tmp_path):
    texts = {v for c in COMMANDS for v in variants(c.text)}
    missing = [r for r in RUN if not any(r in t for t in texts)]
    assert not missing, f"no longer in the docs (update RUN): {missing}"
    if not glob.glob(str(ROOT / "configs/study/tiny.yaml")):
        pytest.fail("configs/study/tiny.yaml is missing")
    os.symlink(ROOT / "configs", tmp_path / "configs")
    prunejax = [sys.executable, "-c", "import sys; from prunejax.cli import main; sys.exit(main())"]
    for line in RUN:
        argv = shlex.split(line)[1:]
        p = subprocess.run(prunejax + argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"{line}\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    assert (tmp_path / "data/kjv/meta.json").exists()
    assert "stages; training tokens" in p.stdout


def test_the_readme_python_calls_public_names_as_their_signatures_allow():
    """Each `prunejax.NAME(...)` in the README's Python is a public name, called with arguments it takes."""
    calls = 0
    for block in code_blocks(ROOT / "README.md", ("python",)):
        tree = ast.parse("\n".join(line for _, line in block))
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "prunejax"
            ):
                continue
            assert node.attr in prunejax.__all__, f"README.md: prunejax.{node.attr} is not in prunejax.__all__"
        for node in ast.walk(tree):
            func = getattr(node, "func", None)
            if (
                isinstance(node, ast.Call)
                and isinstance(func, ast.Attribute)
                and getattr(func.value, "id", "") == "prunejax"
            ):
                signature = inspect.signature(getattr(prunejax, func.attr))
                try:
                    signature.bind(*node.args, **{k.arg: k.value for k in node.keywords})
                except TypeError as e:
                    raise AssertionError(
                        f"README.md line {block[0][0] + node.lineno - 1}: prunejax.{func.attr}: {e}"
                    ) from None
                calls += 1
    assert calls >= 5


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _prose(path: Path) -> str:
    """A Markdown file less its fenced code blocks (their `#` lines are comments, their paths commands)."""
    return re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)


def _anchors(path: Path) -> set[str]:
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", _prose(path), re.M)}


REPO_PATH = re.compile(r"^(configs|docs|tpu_scripts|benchmarks|prunejax|tests|notebooks)/[\w./-]*$")


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_repository_paths_in_the_docs_exist(path):
    """Relative Markdown links (and their #anchors) lead to files that exist; `configs/...`-style paths in
    inline code name files or directories of this repository."""
    text = _prose(path)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no such heading)")
    for span in re.findall(r"`([^`\s]+)`", text):
        if REPO_PATH.match(span) and not (ROOT / span).exists():
            broken.append(f"`{span}`")
    assert not broken, f"{path.relative_to(ROOT)}: {broken}"
