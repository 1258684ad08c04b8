"""`prunejax report STUDY_DIR`: tables, CSV, the paper's Figure-1 plots, and a verdict per finding.

The metric is validation loss on the DATA_DIR's held-out split (the y-axis of the paper's Figure 1);
lower is better, and a gap is `scratch - pruned` (positive = the pruned initialization wins). Cells
are averaged over their seeds with a noise band (noise.py); the grid's records are built in
comparison.py, the verdicts in verdicts.py, the figures in figures.py. Every planned evaluation is a
row of results.csv, with an empty loss where its result is missing: a missing seed is shown as such
(n of planned), never averaged away in silence. For a study with one seed and no dense controls,
report.md and comparison.csv read exactly as they did before seeds and controls existed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import tempfile
from collections import defaultdict
from typing import Any

from prunejax import distributed, storage
from prunejax.distributed import add_launch_args
from prunejax.study.comparison import CONTROL_COLUMNS, GAPS, STATS, comparison, has_control, mean_of, seeded
from prunejax.study.figures import plot
from prunejax.study.noise import fmt_gap, fmt_stat, fmt_value
from prunejax.study.verdicts import findings


def load_results(study_dir: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(stages index, one row per planned evaluation; `val_loss` is None where its result is missing)."""
    path = os.path.join(study_dir, "stages.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{study_dir}: no stages.json (run `prunejax study` first)")
    with open(path) as f:
        index = json.load(f)
    rows = []
    for stage in index["stages"]:
        if stage["kind"] != "eval":
            continue
        file = os.path.join(study_dir, stage["id"], "results.json")
        res: dict[str, Any] = {}
        if os.path.exists(file):
            with open(file) as f:
                res = json.load(f)
        info = stage["info"]
        loss = res.get("validation_loss")
        rows.append(
            {
                "model": info["of"],
                "role": info.get("role"),
                "method": info.get("method", "parent"),
                "granularity": info.get("granularity", ""),
                "ratio": info.get("ratio", 0.0),
                "seed": info.get("seed", 0),
                "setting": info.get("setting", ""),
                "shape": info.get("shape", ""),
                "budget": info.get("budget", info.get("tokens", 0)),
                "tokens": info.get("tokens", 0),
                "val_loss": loss,
                "val_ppl": math.exp(loss) if loss is not None else None,
                "parameters": res.get("model", {}).get("parameters"),
            }
        )
    return index, rows


def csv_rows(comp: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """comparison.csv: means and gaps; spreads and seed counts only when seeds were planned, control columns
    only when controls were (so a single-seed study without controls keeps its columns)."""
    multi, control = seeded(comp), has_control(comp)
    out = []
    for r in comp:
        row: dict[str, Any] = {k: r[k] for k in ("method", "granularity", "ratio", "budget")}
        for k in (*STATS, *GAPS):
            if k in CONTROL_COLUMNS and not control:
                continue
            x = r[k]
            if k in STATS:
                row[k] = mean_of(x)
                if multi:
                    row[f"{k}_sd"] = None if x is None else x.sd
                    row[f"{k}_n"] = None if x is None else f"{x.n}/{x.planned}"
            else:
                row[k] = None if x is None else x.value
                if multi:
                    row[f"{k}_spread"] = None if x is None else x.spread
        out.append(row)
    return out


def _parent_line(index: dict[str, Any], parent_loss: float | None) -> str:
    if index.get("parent_import"):  # pretrained elsewhere: its tokens are not the study's
        return (
            f"Parent: imported from `{os.path.basename(index['parent_import'])}` (pretrained outside the study); "
            f"validation loss {fmt_value(parent_loss)} on this study's held-out data."
        )
    return f"Parent validation loss: {fmt_value(parent_loss)} after {index.get('parent_tokens', 0):,} tokens."


def _seeds_line(index: dict[str, Any], comp: list[dict[str, Any]]) -> list[str]:
    """How cells are aggregated: for several seeds, the statistics; for one, that no gap has a band."""
    if not comp:
        return []
    if not seeded(comp):
        return [
            "Seeds: one per cell, so no gap has a noise band: each is called by its sign alone, and a small gap "
            "may be noise (set `seeds: 3` in the study config to measure the band).",
            "",
        ]
    seeds = sorted({s["info"]["seed"] for s in index["stages"] if s["kind"] == "eval" and "seed" in s["info"]})
    planned = sorted({r[k].planned for r in comp for k in STATS if r[k] is not None and r[k].planned > 1})
    return [
        f"Seeds: {', '.join(map(str, seeds))} ({'/'.join(map(str, planned))} per cell; pruning runs once per "
        "method and ratio, each seed retrains it in its own data order and trains scratch models from its own "
        "init). A cell is mean ± sample standard deviation over its seeds (n − 1 denominator); a gap's spread "
        "is √(sd₁² + sd₂²) of its two cells, and a gap counts only where it exceeds its spread (else *within "
        "noise*); `(n=k/m)` marks a cell with seeds missing, `± ?` a band that cannot be computed.",
        "",
    ]


def _control_table(comp: list[dict[str, Any]]) -> list[str]:
    """Second schedule vs pruning, per method: the split of P-R_R − P_(P+R) at each budget."""
    if not has_control(comp):
        return []
    lines = [
        "## Second schedule vs pruning (dense controls)",
        "",
        "The unpruned parent continued on the same R tokens with the retraining recipe (P then R: two "
        "schedules) and its architecture trained once for P+R tokens under one schedule. Costs are loss "
        "differences (positive: higher loss): second schedule = continued − once; pruning = P-R_R − continued.",
        "",
        "| method | granularity | ratio | R tokens | P-R_R | parent continued | parent once (P+R) "
        "| second schedule | pruning | S_(P+R) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in comp:
        lines.append(
            f"| {r['method']} | {r['granularity']} | {r['ratio']:g} | {r['budget']:,} | {fmt_stat(r['pruned'])} "
            f"| {fmt_stat(r['continued'])} | {fmt_stat(r['once'])} | {fmt_gap(r['schedule_cost'], True)} "
            f"| {fmt_gap(r['pruning_cost'], True)} | {fmt_stat(r['scratch_equal_total'])} |"
        )
    return lines


def parent_curve(study_dir: str) -> list[str]:
    """The pretrained parent's validation curve from its RUN_DIR's metrics.jsonl, and how much the loss fell
    over the last quarter of its tokens (how close the parent is to its capacity). Nothing for a parent
    that was imported or trained without validation (val_every=0)."""
    path = os.path.join(study_dir, "parent", "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        points = [(r["tokens"], r["val_loss"]) for r in map(json.loads, f) if "val_loss" in r]
    if len(points) < 2:
        return []
    final_tokens, final_loss = points[-1]
    lines = [
        "## The parent's validation curve",
        "",
        "| tokens | validation loss |",
        "|---|---|",
        *(f"| {t:,} | {loss:.4f} |" for t, loss in points),
    ]
    start = 0.75 * final_tokens
    before = [p for p in points if p[0] <= start]
    if before:
        (t0, l0), (t1, l1) = before[-1], next(p for p in points if p[0] > start)
        at_start = l0 + (l1 - l0) * (start - t0) / (t1 - t0)  # linear between the two points around it
        fall = (at_start - final_loss) / at_start
        lines += [
            "",
            f"Over the last quarter of its tokens ({round(start):,} -> {final_tokens:,}) the parent's validation "
            f"loss fell from {at_start:.4f} (interpolated) to {final_loss:.4f} ({fall:.2%}).",
        ]
    return lines


def write_report(study_dir: str) -> dict[str, str]:
    """Write report.md, results.csv, comparison.csv and the figures into STUDY_DIR (local or gs://)."""
    if storage.is_remote(study_dir):
        return _write_remote_report(study_dir)
    index, rows = load_results(study_dir)
    comp = comparison(rows)
    parent = [r["val_loss"] for r in rows if r["role"] == "parent" and r["val_loss"] is not None]
    parent_loss = parent[0] if parent else None
    with open(os.path.join(study_dir, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["model"])
        w.writeheader()
        w.writerows(rows)
    table = csv_rows(comp)
    with open(os.path.join(study_dir, "comparison.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]) if table else ["method"])
        w.writeheader()
        w.writerows(table)
    figures = plot(comp, parent_loss, index.get("parent_tokens", 0), study_dir) if comp else []
    statuses = defaultdict(int)
    for s in index["stages"]:
        statuses[s["status"]] += 1
    lines = [
        f"# Study `{index['name']}`: pruning vs. training from scratch",
        "",
        f"Config: `{index.get('source', '')}`. Stages: "
        + ", ".join(f"{v} {k}" for k, v in sorted(statuses.items()))
        + ". Metric: validation loss (nats/token) on held-out data; gap = scratch − pruned (positive: pruned wins).",
        "",
        _parent_line(index, parent_loss),
        "",
        *_seeds_line(index, comp),
        "## Findings",
        "",
        *findings(comp),
        "",
        "## Pruned vs scratch (same shape)",
        "",
        "| method | granularity | ratio | R tokens | one-shot | P-R_R | S_R | gap (equal train) | S_(P+R) "
        "| gap (equal total) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in comp:
        lines.append(
            f"| {r['method']} | {r['granularity']} | {r['ratio']:g} | {r['budget']:,} | {fmt_stat(r['oneshot'])} "
            f"| {fmt_stat(r['pruned'])} | {fmt_stat(r['scratch_equal_train'])} "
            f"| {fmt_gap(r['gap_equal_train'], True)} | {fmt_stat(r['scratch_equal_total'])} "
            f"| {fmt_gap(r['gap_equal_total'], True)} |"
        )
    control = _control_table(comp)
    if control:
        lines += ["", *control]
    curve = parent_curve(study_dir)
    if curve:
        lines += ["", *curve]
    failed = [s for s in index["stages"] if s["status"] == "failed"]
    if failed:
        lines += ["", "## Failed stages", ""] + [f"- `{s['id']}`: {s['error']}" for s in failed]
    lines += ["", "## Figures", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in figures]
    missing = sum(r["val_loss"] is None for r in rows)
    lines += [
        "",
        "Data: `results.csv` (every evaluated model"
        + (f"; {missing} planned without a result have an empty val_loss" if missing else "")
        + "), `comparison.csv` (the table"
        + ("s" if control else "")
        + " above).",
    ]
    md = os.path.join(study_dir, "report.md")
    with open(md, "w") as f:
        f.write("\n".join(lines) + "\n")
    return {"markdown": md, "figures": ",".join(figures)}


def _write_remote_report(study_dir: str) -> dict[str, str]:
    """The report of a gs:// STUDY_DIR: what it reads (stages.json, each results.json, the parent's
    metrics.jsonl) is copied into a local directory, the report is written there exactly as for a local
    study, and its files are uploaded beside the stages."""
    study_dir = study_dir.rstrip("/")
    wanted = ["stages.json", "parent/metrics.jsonl"]
    index_path = storage.join(study_dir, "stages.json")
    if not storage.exists(index_path):
        raise FileNotFoundError(f"{study_dir}: no stages.json (run `prunejax study` first)")
    index = json.loads(storage.read_file(index_path))
    wanted += [f"{s['id']}/results.json" for s in index["stages"] if s["kind"] == "eval"]
    with tempfile.TemporaryDirectory() as local:
        for rel in wanted:
            remote = storage.join(study_dir, rel)
            if storage.exists(remote):
                storage.write_file(os.path.join(local, *rel.split("/")), storage.read_file(remote))
        paths = write_report(local)
        written = [paths["markdown"], *filter(None, paths["figures"].split(","))]
        for name in ("results.csv", "comparison.csv"):
            written.append(os.path.join(local, name))
        for path in written:
            with open(path, "rb") as f:
                storage.write_file(storage.join(study_dir, os.path.basename(path)), f.read())
    figures = [storage.join(study_dir, os.path.basename(p)) for p in filter(None, paths["figures"].split(","))]
    return {"markdown": storage.join(study_dir, "report.md"), "figures": ",".join(figures)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunejax report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("study_dir", help="STUDY_DIR written by `prunejax study`")
    add_launch_args(parser)
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    paths = distributed.one_writer("report", lambda: write_report(args.study_dir))
    if paths:
        print(storage.read_file(paths["markdown"]).decode())
    return 0
