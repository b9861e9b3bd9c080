"""Find the CPU scale by measurement: one recipe, several configurations, the same wall-clock budget for each run.

    python -m bench.scale recipes/ding_switch.yaml --grid ding --minutes 7 --jobs 2
    python -m bench.scale recipes/shakespeare_lm.yaml --grid shakespeare --minutes 7 --jobs 2

Every configuration trains one topk run (seed 1) under `train.max_wall_minutes` on ONE core (train.cpu_threads=1,
JOBS runs side by side, as `make demo` runs its two arms), then is scored on the VALID split only (translation: BLEU
of the best checkpoint, beam per recipe; language modeling: perplexity of the best checkpoint): choosing on test
would leak it into the recipe. The table (configuration, overrides, updates reached, best valid loss, valid BLEU or
ppl, wall) goes to bench/results/scale_<grid>.json and .md; the winner is the best valid BLEU (translation) or the
lowest valid perplexity (language modeling).

Run it on an otherwise idle machine: the budget is wall-clock, so anything else running costs updates.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.harness import REPO_ROOT, RESULTS_DIR, environment, git_commit
from smx.run import metrics
from smx.run.paths import RunDir
from smx.study.stats import last_quarter_gain

# grid name -> [(configuration name, recipe overrides)]; every run also gets the budget, topk, seed 1, one thread.
GRIDS: dict[str, list[tuple[str, list[str]]]] = {
    "ding": [
        ("d128-tok4k", []),
        ("d128-tok2k", ["train.max_tokens=2048"]),
        ("d64-tok2k", ["model.embed_dim=64", "model.ffn_dim=128", "train.max_tokens=2048"]),
        ("d256-tok4k", ["model.embed_dim=256", "model.ffn_dim=512", "optim.lr=1e-3"]),
        # a 2k-merge BPE (smx data prep ding-de-en --bpe-merges 2000 --out data/bpe2k): a quarter of the softmax
        ("d128-tok4k-bpe2k", ["data.root=data/bpe2k"]),
        ("d128-tok2k-bpe2k", ["data.root=data/bpe2k", "train.max_tokens=2048"]),
        # round 2, around the best of round 1: smaller batches, a higher peak lr
        ("d128-tok1k-bpe2k", ["data.root=data/bpe2k", "train.max_tokens=1024"]),
        ("d128-tok2k-bpe2k-lr4e-3", ["data.root=data/bpe2k", "train.max_tokens=2048", "optim.lr=4e-3"]),
    ],
    "shakespeare": [  # one BPE (the dataset's 8k merges): per-token perplexities are comparable only within one
        ("d128-tok4k", []),
        ("d128-tok2k", ["train.max_tokens=2048"]),
        ("d64-tok2k", ["model.embed_dim=64", "model.ffn_dim=128", "train.max_tokens=2048"]),
        ("d128-tok2k-lr4e-3", ["train.max_tokens=2048", "optim.lr=4e-3"]),
    ],
}


def smx(*args: str) -> list[str]:
    return [sys.executable, "-m", "smx", *args]


def train_and_score(recipe: Path, name: str, overrides: list[str], minutes: float, root: Path) -> dict:
    run = root / name
    sets = [*overrides, f"train.max_wall_minutes={minutes}", "train.max_update=1000000", "train.cpu_threads=1",
            "router.estimator=topk", "seed=1"]
    cmd = smx("train", str(recipe), "--run-dir", str(run), "--no-progress",
              *[x for s in sets for x in ("--set", s)])
    t0 = time.monotonic()
    with open(root / f"{name}.log", "w") as log:
        rc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.monotonic() - t0
    row = {"config": name, "overrides": overrides, "rc": rc, "wall_s": round(wall, 1)}
    if rc != 0:
        return row
    rd = RunDir(run)
    row["task"] = (rd.read_meta() or {}).get("task")
    records = metrics.read(rd.metrics)
    valid = [r for r in records if r["split"] == "valid" and isinstance(r.get("loss"), (int, float))]
    # updates reached: every train entry counts, the epoch-end one fairseq logs when the wall budget stops it too
    row["updates"] = max((r["step"] for r in metrics.entries(rd.metrics) if r["split"] == "train"), default=0)
    row["best_valid_loss"] = min((r["loss"] for r in valid), default=None)
    row["final_valid_loss"] = valid[-1]["loss"] if valid else None
    row["valid_curve"] = [[r["step"], r["loss"]] for r in valid]
    kind = "bleu" if row["task"] == "translation" else "ppl"
    ev = subprocess.run(smx("eval", kind, str(run), "--subset", "valid"), cwd=REPO_ROOT, capture_output=True,
                        text=True)
    result = (rd.read_eval(kind) or {}) if ev.returncode == 0 else {}
    if kind == "bleu":
        row["valid_bleu_tok"], row["valid_sacrebleu"] = result.get("bleu_tok"), result.get("sacrebleu")
    else:
        row["valid_ppl"] = result.get("ppl")
    row["eval_rc"] = ev.returncode
    return row


def markdown(rows: list[dict], minutes: float, winner: str | None) -> str:
    lm = any(r.get("task") == "language_modeling" for r in rows)
    score = "valid ppl" if lm else "valid BLEU (tok / sacre)"
    lines = [f"Budget {minutes} min wall per run, 1 core each, topk, seed 1; winner: {winner}.", "",
             f"| config | overrides | updates | best valid loss | final valid loss | last-quarter gain | {score} | "
             "wall s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if lm:
            s = f"{r['valid_ppl']:.2f}" if r.get("valid_ppl") else "-"
        else:
            s = (f"{r['valid_bleu_tok']:.2f} / {r['valid_sacrebleu']:.2f}"
                 if r.get("valid_bleu_tok") is not None else "-")
        gain = r.get("last_quarter_gain")
        f = lambda v: f"{v:.3f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
        lines.append(f"| {r['config']} | {' '.join(r['overrides']) or '(recipe)'} | {r.get('updates', '-')} | "
                     f"{f(r.get('best_valid_loss'))} | {f(r.get('final_valid_loss'))} | "
                     f"{f'{100 * gain:.1f}%' if gain is not None else '-'} | {s} | {r['wall_s']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--grid", choices=sorted(GRIDS), required=True)
    ap.add_argument("--minutes", type=float, default=7.0, help="training wall-clock budget per run")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated configuration names (default: the whole grid)")
    ap.add_argument("--root", type=Path, default=Path("/tmp/smx-scale"), help="run directories go here")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of configurations not run now from the existing JSON (a second round)")
    args = ap.parse_args(argv)
    grid = [c for c in GRIDS[args.grid] if not args.only or c[0] in args.only.split(",")]
    root = args.root / args.grid
    root.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda c: train_and_score(args.recipe, c[0], c[1], args.minutes, root), grid))
    for r in rows:
        r["last_quarter_gain"] = last_quarter_gain(r.get("valid_curve") or [])
    out = args.json or RESULTS_DIR / f"scale_{args.grid}.json"
    commands = ["python -m bench.scale " + " ".join(argv if argv is not None else sys.argv[1:])]
    if args.merge and out.is_file():
        old = json.loads(out.read_text())
        now = {r["config"] for r in rows}
        rows = [r for r in old["rows"] if r["config"] not in now] + rows
        commands = old.get("commands", [old.get("command")]) + commands
    write(out, rows, args, commands)
    return 0


def winner_of(rows: list[dict]) -> str | None:
    """The best valid BLEU (translation) or the lowest valid perplexity (language modeling) among finished rows."""
    ok = [r for r in rows if r["rc"] == 0 and r.get("eval_rc") == 0]
    if ok and ok[0].get("task") == "language_modeling":
        return min(ok, key=lambda r: r["valid_ppl"])["config"]
    return max(ok, key=lambda r: r.get("valid_bleu_tok") or -1)["config"] if ok else None


def write(out: Path, rows: list[dict], args, commands: list[str]) -> None:
    winner = winner_of(rows)
    doc = {"benchmark": "scale", "recipe": str(args.recipe), "grid": args.grid, "minutes": args.minutes,
           "jobs": args.jobs, "selection": "best valid BLEU (translation) / lowest valid ppl (LM); test never read",
           "winner": winner, "rows": rows, "environment": environment(1), "git": git_commit(),
           "commands": commands}
    out.write_text(json.dumps(doc, indent=1) + "\n")
    md = markdown(rows, args.minutes, winner) + "\nCommands:\n\n" + "".join(f"    {c}\n" for c in commands)
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    raise SystemExit(main())
