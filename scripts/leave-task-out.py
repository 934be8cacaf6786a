#!/usr/bin/env python3
"""Leave-one-task-out evaluation: how a router does on a task it never saw.

For each task of a family, `model-router train` on the other tasks and `model-router eval` on
the held-out task, then print one table per family and setting with the comparators that matter
out of distribution:

* best single ON THE HELD-OUT TASK (what the kept out-of-distribution test compares against; it
  needs labels of the new task, which a deployment does not have),
* the training-best single model (best mean over the training tasks' prompts) scored on the
  held-out task: the honest "no router" rule,
* the router's quality / balanced / cost modes and AIQ, and eval's kNN (quality mode), which is
  fit out of fold ON the held-out task (it sees the task's other prompts: a reference, not a
  competitor).

Uses only the CLI (`data import`, `train`, `eval --json`); bundles and per-task files go under
--workdir (default /tmp/leave-task-out), never into models/. Finished bundles and evals are
reused, so a rerun only trains what is missing (`--fresh` retrains). Not part of CI.

Example (from the repository root, data in ../shared/data):

    scripts/leave-task-out.py --family routerdc
    scripts/leave-task-out.py --family llmrouter --settings shipped,nogate \
        --tasks agentverse-logicgrid,agentverse-mgsm,commongen,natural_qa,trivia_qa,mmlu,gsm8k,mbpp
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

DATA = Path("../shared/data")

# What each family ships with (models/<family>/README.md): the import, and the train flags.
FAMILIES = {
    "routerdc": {
        "format": "routerdc",
        "inputs": sorted((DATA / "routerdc").glob("*.json")),
        "import_flags": [],
        "train_flags": {"--task-shrinkage": "0.9", "--catalog": "models/routerdc/catalog.toml"},
    },
    "llmrouter": {
        "format": "llmrouter",
        "inputs": [DATA / "llmrouter" / "train.json"],
        "import_flags": ["--prices", str(DATA / "llmrouter" / "default_llm.json")],
        "train_flags": {
            "--task-shrinkage": "0.9",
            "--task-gate": None,
            "--catalog": "models/llmrouter/catalog.toml",
        },
    },
}

# Settings compared on held-out tasks: changes to the family's shipped train flags
# (a value of False removes the flag).
SETTINGS = {
    "shipped": {},
    "linear": {"--hidden": ""},
    "shrink0": {"--task-shrinkage": "0"},
    "shrink0.5": {"--task-shrinkage": "0.5"},
    "gate": {"--task-gate": None},
    "nogate": {"--task-gate": False},
}


def run(cmd, log):
    """Run a command, appending its stderr to `log`; return stdout (raise on failure)."""
    with open(log, "a") as err:
        err.write(f"$ {' '.join(cmd)}\n")
        err.flush()
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}; see {log}")
    return done.stdout


def split_by_task(binary, family, workdir):
    """Import the family once to canonical JSONL and return {task: [record, ...]}."""
    spec = FAMILIES[family]
    canonical = workdir / f"{family}-all.jsonl"
    if not canonical.exists():
        run([binary, "data", "import", "--format", spec["format"], *spec["import_flags"],
             "--out", str(canonical), *map(str, spec["inputs"])], workdir / "import.log")
    by_task = {}
    with open(canonical) as lines:
        for line in lines:
            record = json.loads(line)
            by_task.setdefault(record["task"], []).append(record)
    return by_task


def write_jsonl(path, records):
    with open(path, "w") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")


def model_means(records):
    """Mean score per model over the records."""
    models = records[0]["scores"].keys()
    return {m: statistics.fmean(r["scores"][m] for r in records) for m in models}


def train_flags(family, setting):
    flags = dict(FAMILIES[family]["train_flags"])
    for flag, value in SETTINGS[setting].items():
        if value is False:
            flags.pop(flag, None)
        else:
            flags[flag] = value
    args = []
    for flag, value in flags.items():
        args += [flag] if value is None else [flag, value]
    return args


def held_out_row(args, family, setting, task, by_task):
    """Train without `task`, evaluate on it, and return the row of the table."""
    base = args.workdir / family
    base.mkdir(parents=True, exist_ok=True)
    held_out = base / f"{task}.jsonl"
    training = base / f"without-{task}.jsonl"
    train_records = [r for t, rs in by_task.items() if t != task for r in rs]
    if not held_out.exists() or args.fresh:
        write_jsonl(held_out, by_task[task])
        write_jsonl(training, train_records)
    bundle = base / f"{setting}-without-{task}"
    evaluation = base / f"{setting}-{task}.eval.json"
    log = base / f"{setting}-{task}.log"
    if args.fresh or not (bundle / "head.safetensors").exists():
        started = time.time()
        print(f"[{family}/{setting}] training without {task} ...", file=sys.stderr, flush=True)
        run([args.bin, "train", "--data", str(training), "--format", "jsonl",
             *train_flags(family, setting), "--out", str(bundle), "--json"], log)
        print(f"[{family}/{setting}] trained in {time.time() - started:.0f} s", file=sys.stderr)
        evaluation.unlink(missing_ok=True)
    if not evaluation.exists():
        report = run([args.bin, "eval", "--model", str(bundle), "--data", str(held_out),
                      "--format", "jsonl", "--json"], log)
        evaluation.write_text(report)
    report = json.loads(evaluation.read_text())
    held_means = model_means(by_task[task])
    train_means = model_means(train_records)
    train_best = max(train_means, key=train_means.get)
    best = max(held_means, key=held_means.get)
    modes = report["modes"]
    claims, claimed_as = gate_claims(args, bundle, by_task[task], log)
    return {
        "gate_claims": claims, "claimed_as": claimed_as,
        "task": task, "n": report["n"],
        "best_single": best, "best_single_q": held_means[best],
        "train_best": train_best, "train_best_q": held_means[train_best],
        "quality": modes["quality"]["quality"], "balanced": modes["balanced"]["quality"],
        "cost_mode": modes["cost"]["quality"],
        "quality_cost_share": modes["quality"]["cost"] / report["best_single"]["cost"],
        "aiq": report["aiq"], "knn": report["baselines"]["knn"]["modes"]["quality"]["quality"],
    }


def gate_claims(args, bundle, records, log):
    """Share of held-out prompts the bundle's task gate claims as one of its training tasks
    (`route --json` carries `task_gate` only then), and the task it names most often."""
    if not (bundle / "gate.safetensors").exists():
        return None, None
    prompts = "".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in records)
    with open(log, "a") as err:
        done = subprocess.run([args.bin, "route", "--model", str(bundle), "--mode", "quality",
                               "--jsonl"], input=prompts, stdout=subprocess.PIPE, stderr=err,
                              text=True, check=True)
    claimed = [d["task_gate"]["task"] for d in map(json.loads, done.stdout.splitlines())
               if d.get("task_gate")]
    top = max(set(claimed), key=claimed.count) if claimed else None
    return len(claimed) / len(records), top


def short(model):
    return model.split("/")[-1][:22]


def print_table(family, setting, rows):
    print(f"\n{family}, setting `{setting}` (train flags: {' '.join(train_flags(family, setting))})")
    print("| held-out task | n | best single on it | training-best single on it | router quality "
          "| Δ vs best single | Δ vs training-best | balanced | cost | quality-mode cost share "
          "| AIQ | kNN in-task (ref.) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    gate_notes = []
    for r in rows:
        print(f"| {r['task']} | {r['n']} | {short(r['best_single'])} {r['best_single_q']:.4f} "
              f"| {short(r['train_best'])} {r['train_best_q']:.4f} | {r['quality']:.4f} "
              f"| {100 * (r['quality'] - r['best_single_q']):+.1f} "
              f"| {100 * (r['quality'] - r['train_best_q']):+.1f} | {r['balanced']:.4f} "
              f"| {r['cost_mode']:.4f} | {100 * r['quality_cost_share']:.0f} % | {r['aiq']:.4f} "
              f"| {r['knn']:.4f} |")
        if r["gate_claims"] is not None:
            gate_notes.append(f"{r['task']} {100 * r['gate_claims']:.0f} %"
                              + (f" (mostly as {r['claimed_as']})" if r["claimed_as"] else ""))
    mean = {k: statistics.fmean(r[k] for r in rows)
            for k in ("best_single_q", "train_best_q", "quality", "balanced", "cost_mode",
                      "quality_cost_share", "aiq", "knn")}
    print(f"| **mean over {len(rows)} tasks** | | {mean['best_single_q']:.4f} "
          f"| {mean['train_best_q']:.4f} | **{mean['quality']:.4f}** "
          f"| {100 * (mean['quality'] - mean['best_single_q']):+.1f} "
          f"| {100 * (mean['quality'] - mean['train_best_q']):+.1f} | {mean['balanced']:.4f} "
          f"| {mean['cost_mode']:.4f} | {100 * mean['quality_cost_share']:.0f} % "
          f"| {mean['aiq']:.4f} | {mean['knn']:.4f} |")
    if gate_notes:
        print("task gate: held-out prompts it claims as a training task: " + ", ".join(gate_notes))
    return mean


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=[*FAMILIES, "both"], default="both")
    parser.add_argument("--tasks", help="comma-separated held-out tasks (default: every task)")
    parser.add_argument("--settings", default="shipped",
                        help=f"comma-separated, of: {', '.join(SETTINGS)}")
    parser.add_argument("--bin", default=os.environ.get("MODEL_ROUTER", "target/debug/model-router"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/leave-task-out"))
    parser.add_argument("--fresh", action="store_true", help="retrain even if a bundle exists")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    families = list(FAMILIES) if args.family == "both" else [args.family]
    summary = {}
    for family in families:
        by_task = split_by_task(args.bin, family, args.workdir)
        tasks = args.tasks.split(",") if args.tasks else sorted(by_task)
        unknown = [t for t in tasks if t not in by_task]
        if unknown:
            raise SystemExit(f"{family} has no task {unknown}; it has {sorted(by_task)}")
        for setting in args.settings.split(","):
            if setting not in SETTINGS:
                raise SystemExit(f"unknown setting {setting}; known: {', '.join(SETTINGS)}")
            rows = [held_out_row(args, family, setting, t, by_task) for t in tasks]
            summary[f"{family}/{setting}"] = {"rows": rows,
                                              "mean": print_table(family, setting, rows)}
    (args.workdir / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
