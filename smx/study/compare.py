"""Compare runs: read run directories, aggregate seeds per arm (estimator + routing variant), steps-to-target
speed-ups.

Reads nothing but run-directory files (meta.json, recipe.yaml, metrics.jsonl, eval/*.json). Everything below
`load_run` is a pure function of the loaded data. Statistical choices (also written into compare.md/compare.json):
- intervals over seeds are two-sided 95% Student-t intervals, mean +- t_{0.975, n-1} * s / sqrt(n) (s: sample std,
  ddof=1); with a single seed there is no interval;
- updates-to-target, per seed: the first validated update whose metric is <= target (no interpolation unless asked:
  then linear between the last validation point above the target and the first at or below it);
- default target: the baseline's best mean curve value, min over updates of the mean over seeds (updates validated
  by every baseline seed);
- speed-up = mean updates-to-target of the baseline / mean updates-to-target of the estimator (> 1: faster), with a
  95% percentile bootstrap interval (seeds resampled with replacement, independently per group, 10,000 resamples,
  numpy default_rng(0)); only when every seed of both groups reached the target, else n/a.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from smx.run import metrics
from smx.errors import UserError
from smx.run.paths import RunDir
from smx.study.stats import (BOOT_SEED, LEVEL, N_BOOT, Interval, bootstrap_ratio_ci, last_quarter_gain, mean_ci,
                             mean_curve, steps_to_target)
from smx.study.verdict import Contrast, contrasts, primary, verdict_line

_METRIC = re.compile(r"^(train|valid)_(\w+)$")


# ----------------------------------------------------------------------------------------------------- run loading
@dataclass(frozen=True)
class RunData:
    """What compare needs from one run directory."""

    path: Path
    name: str
    task: str
    dataset: str
    estimator: str
    seed: int | None
    status: str
    records: tuple = field(repr=False)  # metrics.jsonl entries by step (smx.run.metrics.read: no epoch-end averages)
    bleu: dict | None = None
    ppl: dict | None = None
    protocol: str = "controlled"  # router.protocol of its recipe (runs from before protocols: controlled)
    settings: dict = field(default_factory=dict, repr=False)  # flattened resolved recipe, dotted keys
    data_id: str | None = None  # meta.json data.id: the binarized data it trained on (smx.run.dataid)

    @property
    def arm(self) -> str:
        """The group this run belongs to: its estimator, plus the routing variant when it is not Switch's
        (arm_label): topk with loss-free balancing is another arm than plain topk."""
        return arm_label(self.estimator, self.settings)

    def curve(self, metric: str) -> list[tuple[int, float]]:
        """(update, value) for `metric` (e.g. valid_loss), sorted by update; the last record of an update wins."""
        split, key = parse_metric(metric)
        rows = [r for r in self.records if r.get("split") == split and isinstance(r.get(key), (int, float))]
        main = [r for r in rows if r.get("subset") in (None, split)]  # the first validation subset only
        points = {int(r["step"]): float(r[key]) for r in (main or rows)}
        return sorted(points.items())

    def wps(self) -> float | None:
        vals = [float(r["wps"]) for r in self.records
                if r.get("split") == "train" and isinstance(r.get("wps"), (int, float))]
        return sum(vals) / len(vals) if vals else None

    def wall(self) -> float | None:
        vals = [float(r["wall"]) for r in self.records if isinstance(r.get("wall"), (int, float))]
        return max(vals) if vals else None

    def moe_load(self) -> dict[str, float]:
        """The last logged moe_load_* values (the last train entry carrying them; any split if none)."""
        for splits in (("train",), ("train", "valid")):
            for r in reversed(self.records):
                if r.get("split") in splits and any(k.startswith("moe_load_") for k in r):
                    return {k: float(v) for k, v in r.items() if k.startswith("moe_load_")}
        return {}


    def telemetry(self) -> dict[str, float]:
        """Routing telemetry of the last train entry logging it: TELEMETRY keys without the moe_ prefix."""
        for r in reversed(self.records):
            if r.get("split") == "train" and isinstance(r.get("moe_imbalance"), (int, float)):
                return {k[len("moe_"):]: float(r[k]) for k in TELEMETRY if isinstance(r.get(k), (int, float))}
        return {}


# Routing telemetry (smx.fairseq_plugin.criteria): means over the MoE layers at the last logging step
TELEMETRY = ("moe_imbalance", "moe_nograd", "moe_logit_rms", "moe_active", "moe_sparsity", "moe_l1_coeff")
# The routing-variant keys that make an arm besides its estimator, with their Switch values (smx.recipe.schema)
VARIANT_KEYS = (("moe.balance", "loss"), ("moe.score", "softmax"), ("moe.shared_experts", 0),
                ("moe.expert_ffn_dim", None))


def arm_label(estimator: str, settings: dict) -> str:
    """"topk", or "topk[balance=loss_free]", "topk[shared_experts=2, expert_ffn_dim=64]": the estimator and every
    VARIANT_KEYS value that is not Switch's (runs from before these keys: the estimator)."""
    parts = [f"{key.split('.', 1)[1]}={settings[key]}" for key, plain in VARIANT_KEYS
             if settings.get(key, plain) != plain]
    return f"{estimator}[{', '.join(parts)}]" if parts else estimator


def parse_metric(metric: str) -> tuple[str, str]:
    m = _METRIC.match(metric)
    if not m:
        raise UserError(f"--metric {metric!r}: expected <split>_<field> such as valid_loss, valid_nll_loss, valid_ppl")
    return m.group(1), m.group(2)


def load_runs(paths: list[Path]) -> tuple[list[RunData], tuple[str, ...]]:
    """(the runs that load, one line per run that does not): one unreadable run does not block a study."""
    loaded, skipped = [], []
    for p in paths:
        try:
            loaded.append(load_run(p))
        except UserError as e:
            skipped.append(str(e))
    return loaded, tuple(skipped)


def load_run(path: Path) -> RunData:
    """Load one run directory; UserError naming the file when it is not one."""
    rd = RunDir(path)
    meta = rd.read_meta()
    if meta is None:
        raise UserError(f"{path}: not a run directory (no readable meta.json)")
    if not rd.metrics.is_file():
        raise UserError(f"{path}: run directory without metrics.jsonl")
    recipe = {}
    if rd.recipe.is_file():
        try:
            recipe = yaml.safe_load(rd.recipe.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{rd.recipe}: not valid YAML ({e.__class__.__name__})") from None
    data, router = recipe.get("data") or {}, recipe.get("router") or {}
    seed = meta.get("seed", recipe.get("seed"))
    protocol = meta.get("protocol") or router.get("protocol") or "controlled"
    return RunData(
        path=path, name=str(meta.get("name") or path.name),
        task=str(meta.get("task") or recipe.get("task") or "?"),
        dataset=str(meta.get("dataset") or data.get("dataset") or "?"),
        estimator=str(meta.get("estimator") or router.get("estimator") or "?"),
        seed=int(seed) if isinstance(seed, (int, float)) else None,
        status=str(meta.get("status", "?")), records=tuple(metrics.read(rd.metrics)),
        bleu=rd.read_eval("bleu"), ppl=rd.read_eval("ppl"),
        protocol=str(protocol), settings=flatten(recipe),
        data_id=str(meta["data"]["id"]) if isinstance(meta.get("data"), dict) and meta["data"].get("id") else None)


# Keys that name or seed a run rather than set how it trains; never listed as a difference between arms.
_IDENTITY_KEYS = {"name", "seed", "router.estimator"}


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"moe": {"k": 1}} -> {"moe.k": 1}; router.options and router.per_estimator stay whole (one setting each)."""
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in ("router.options", "router.per_estimator"):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def setting_differences(runs: list[RunData]) -> dict[str, dict[str, list]]:
    """Every resolved recipe key whose value is not the same for all runs: {key: {arm: [distinct values]}}.

    The estimator and seed themselves are not listed; a key that differs between the seeds of one arm is
    listed too (its list then holds several values).
    """
    keys = sorted({k for r in runs for k in r.settings} - _IDENTITY_KEYS)
    out: dict[str, dict[str, list]] = {}
    for key in keys:
        values = [json.dumps(r.settings.get(key), sort_keys=True) for r in runs]
        if len(set(values)) > 1:
            per: dict[str, list] = {}
            for r, v in zip(runs, values):
                if json.loads(v) not in per.setdefault(r.arm, []):
                    per[r.arm].append(json.loads(v))
            out[key] = per
    return out


def discover(paths) -> list[Path]:
    """Run directories named by `paths`: each a run dir (has meta.json) or a study dir / runs root holding them."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise UserError(f"{p}: no such directory")
        if RunDir(p).meta.is_file():
            found.append(p)
            continue
        runs = sorted(c for c in p.iterdir() if c.is_dir() and RunDir(c).meta.is_file())
        if not runs:
            raise UserError(f"{p}: neither a run directory nor a study directory "
                            "(no meta.json in it or its subdirectories)")
        found.extend(runs)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique


def check_comparable(runs: list[RunData]) -> None:
    """Refuse runs of different tasks, datasets, data (re-prepared) or protocols with one line naming two that differ.

    Protocols are never pooled: a reference arm and a controlled arm differ in more than the estimator, so a
    speed-up between them would not be the estimator's; compare each protocol's runs on their own.
    """
    first = runs[0]
    for r in runs[1:]:
        if r.protocol != first.protocol:
            raise UserError(f"cannot compare runs of different protocols: {first.path} (protocol {first.protocol}) "
                            f"vs {r.path} (protocol {r.protocol}); their arms differ in more than the estimator, "
                            "so compare each protocol's runs separately")
        for what in ("task", "dataset"):
            if getattr(r, what) != getattr(first, what):
                raise UserError(f"cannot compare runs of different {what}s: {first.path} "
                                f"({what} {getattr(first, what)}) vs {r.path} ({what} {getattr(r, what)})")
    ided = [r for r in runs if r.data_id]
    for r in ided[1:]:
        if r.data_id != ided[0].data_id:
            raise UserError(f"cannot compare runs trained on different data: {ided[0].path} (data id "
                            f"{ided[0].data_id[:12]}) vs {r.path} (data id {r.data_id[:12]}); the dataset was "
                            "re-prepared between them (meta.json data)")


# ------------------------------------------------------------------------------------------------------ summaries
@dataclass(frozen=True)
class GroupSummary:
    """One arm's seeds aggregated."""

    estimator: str  # the arm (RunData.arm): the estimator, with its routing variant when not Switch's
    runs: tuple[str, ...]
    seeds: tuple[int | None, ...]
    best: Interval | None
    final: Interval | None
    bleu_tok: Interval | None
    sacrebleu: Interval | None
    ppl: Interval | None
    steps: tuple[float | None, ...]  # updates-to-target per seed (None: not reached)
    steps_ci: Interval | None  # over the seeds that reached the target
    speedup: float | None
    speedup_lo: float | None
    speedup_hi: float | None
    speedup_note: str
    wps: Interval | None
    wall: Interval | None
    curve: tuple  # (updates, mean, min, max) lists
    load: dict
    per_seed: dict = field(default_factory=dict, repr=False)  # quantity -> {seed: value} (smx.study.verdict)
    contrasts: tuple[Contrast, ...] = ()  # arm - baseline per quantity (empty for the baseline itself)
    telemetry: dict = field(default_factory=dict)  # mean over seeds of RunData.telemetry() ({} before it was logged)

    @property
    def verdict(self) -> str | None:
        """The verdict of the primary contrast (BLEU, else test ppl, else best valid); None for the baseline."""
        c = primary(self.contrasts)
        return c.verdict if c is not None else None

    @property
    def last_quarter(self) -> float | None:
        """Relative improvement of the mean curve over its last quarter of updates (small: it is flattening)."""
        return last_quarter_gain(list(zip(self.curve[0], self.curve[1])))

    @property
    def reached(self) -> int:
        return sum(s is not None for s in self.steps)

    def to_dict(self) -> dict:
        iv = lambda x: x.to_dict() if x is not None else None  # noqa: E731
        return {"estimator": self.estimator, "runs": list(self.runs), "seeds": list(self.seeds),
                "best": iv(self.best), "final": iv(self.final), "bleu_tok": iv(self.bleu_tok),
                "sacrebleu": iv(self.sacrebleu), "ppl": iv(self.ppl),
                "updates_to_target": list(self.steps), "updates_to_target_mean": iv(self.steps_ci),
                "reached": self.reached, "speedup": self.speedup, "speedup_ci": [self.speedup_lo, self.speedup_hi],
                "speedup_note": self.speedup_note, "tokens_per_s": iv(self.wps), "wall_s": iv(self.wall),
                "curve": {"updates": self.curve[0], "mean": self.curve[1], "min": self.curve[2], "max": self.curve[3]},
                "expert_load": self.load, "per_seed": {q: {str(k): v for k, v in d.items()}
                                                       for q, d in self.per_seed.items()},
                "vs_baseline": [c.to_dict() for c in self.contrasts], "verdict": self.verdict,
                "last_quarter_gain": self.last_quarter, **({"telemetry": self.telemetry} if self.telemetry else {})}


@dataclass(frozen=True)
class Comparison:
    metric: str
    target: float | None
    target_source: str
    baseline: str | None
    interpolate: bool
    groups: tuple[GroupSummary, ...]
    notes: tuple[str, ...]
    protocol: str = "controlled"
    differences: dict = field(default_factory=dict)  # setting_differences(): what differs between the arms

    def verdict_lines(self) -> list[str]:
        """One plain-language line per arm against the baseline (none without a baseline)."""
        if self.baseline is None:
            return []
        arms = [g.estimator for g in self.groups]
        cmd = f"`smx sweep RECIPE --estimators {','.join(arms)} --seeds 1,2,3` (or `make reproduce`)"
        return [verdict_line(g.estimator, self.baseline, g.contrasts, self.protocol, cmd)
                for g in self.groups if g.estimator != self.baseline]

    def flattening_line(self) -> str:
        """How much each mean curve still improved over its last quarter of updates."""
        parts = [f"{g.estimator} {100 * g.last_quarter:.1f}%" for g in self.groups if g.last_quarter is not None]
        return (f"Last quarter of training: relative {self.metric} improvement of the mean curve from 3/4 of the "
                "updates to the end: " + ", ".join(parts) + ".") if parts else ""

    def to_dict(self) -> dict:
        return {"protocol": self.protocol, "differences": self.differences, "verdicts": self.verdict_lines(),
                "metric": self.metric, "target": self.target, "target_source": self.target_source,
                "baseline": self.baseline, "interpolate": self.interpolate, "level": LEVEL,
                "method": {"interval": "Student-t over seeds (ddof=1)",
                           "updates_to_target": "first validated update with metric <= target"
                           + (" (linear interpolation between validation points)" if self.interpolate else ""),
                           "speedup": f"ratio of mean updates-to-target (baseline / estimator); percentile bootstrap "
                                      f"over seeds, {N_BOOT} resamples, numpy default_rng({BOOT_SEED})"},
                "groups": [g.to_dict() for g in self.groups], "notes": list(self.notes)}


def _field_ci(runs, get) -> Interval | None:
    return mean_ci([v for v in (get(r) for r in runs) if isinstance(v, (int, float))])


def _mean_load(runs, get=RunData.moe_load) -> dict[str, float]:
    loads = [get(r) for r in runs]
    keys = sorted({k for d in loads for k in d})
    return {k: sum(d[k] for d in loads if k in d) / sum(k in d for d in loads) for k in keys}


def _seed_key(r: RunData) -> int | str:
    return r.seed if r.seed is not None else r.name  # no seed: the run pairs with nothing


def per_seed_values(rs: list[RunData], curves: dict, steps: dict) -> dict[str, dict]:
    """quantity -> {seed: value} for one arm's runs (smx.study.verdict.QUANTITIES; missing values left out)."""
    get = {
        "bleu_tok": lambda r: (r.bleu or {}).get("bleu_tok"),
        "sacrebleu": lambda r: (r.bleu or {}).get("sacrebleu"),
        "ppl": lambda r: (r.ppl or {}).get("ppl"),
        "best": lambda r: min(v for _, v in curves[r.path]) if curves[r.path] else None,
        "final": lambda r: curves[r.path][-1][1] if curves[r.path] else None,
        "updates_to_target": lambda r: steps[r.path],
        "tokens_per_s": RunData.wps,
        "wall_s": RunData.wall,
    }
    out = {}
    for q, f in get.items():
        vals = {_seed_key(r): float(v) for r in rs if isinstance(v := f(r), (int, float))}
        if vals:
            out[q] = vals
    return out


def summarize(runs: list[RunData], metric: str = "valid_loss", baseline: str | None = "topk",
              target: float | None = None, interpolate: bool = False, require_baseline: bool = False,
              skipped: tuple[str, ...] = ()) -> Comparison:
    """Aggregate runs per arm (RunData.arm: the estimator and its routing variant): losses, BLEU, updates-to-target
    and speed-ups over the baseline arm.

    skipped: one line per run directory that could not be read (listed in the notes)."""
    if not runs:
        raise UserError("no runs to compare" + (f": every run was unreadable ({skipped[0]})" if skipped else ""))
    check_comparable(runs)
    parse_metric(metric)
    curves = {r.path: r.curve(metric) for r in runs}
    if not any(curves.values()):
        raise UserError(f"no run has {metric} records in its metrics.jsonl (--metric)")
    by_est: dict[str, list[RunData]] = {}
    for r in sorted(runs, key=lambda r: (r.arm, r.seed if r.seed is not None else -1, r.name)):
        by_est.setdefault(r.arm, []).append(r)
    notes: list[str] = [f"skipped {line}" for line in skipped]
    if baseline not in by_est:
        if require_baseline:
            raise UserError(f"--baseline {baseline!r}: no such estimator among the runs; have: {', '.join(by_est)}")
        if baseline is not None:
            notes.append(f"baseline {baseline} not among the runs: no speed-ups")
        baseline = None
    target_source = "--target"
    if target is None and baseline is not None:
        _, mean, _, _ = mean_curve([curves[r.path] for r in by_est[baseline]])
        target, target_source = (min(mean), f"best mean {metric} of baseline {baseline}") if mean else (None, "")
    if target is None:
        target_source = ""
        notes.append("no target (pass --target or include the baseline): no updates-to-target")
    steps = {r.path: steps_to_target(curves[r.path], target, interpolate) if target is not None else None for r in runs}
    base_steps = [steps[r.path] for r in by_est[baseline]] if baseline else []
    order = ([baseline] if baseline else []) + sorted(e for e in by_est if e != baseline)
    groups = []
    for est in order:
        rs = by_est[est]
        cs = [curves[r.path] for r in rs]
        st = tuple(steps[r.path] for r in rs)
        ps = per_seed_values(rs, curves, steps)  # the baseline comes first: groups[0] when there is one
        speedup = lo = hi = None
        note = ""
        if target is not None and baseline is not None:
            if est == baseline:
                note = "baseline"
            if None in st or None in base_steps:
                note = "n/a: not every seed reached the target"
            else:
                speedup = (sum(base_steps) / len(base_steps)) / (sum(st) / len(st))
                if est != baseline and len(st) > 1 and len(base_steps) > 1:
                    lo, hi = bootstrap_ratio_ci(base_steps, st)
        groups.append(GroupSummary(
            estimator=est, runs=tuple(r.name for r in rs), seeds=tuple(r.seed for r in rs),
            best=mean_ci([min(v for _, v in c) for c in cs if c]),
            final=mean_ci([c[-1][1] for c in cs if c]),
            bleu_tok=_field_ci(rs, lambda r: (r.bleu or {}).get("bleu_tok")),
            sacrebleu=_field_ci(rs, lambda r: (r.bleu or {}).get("sacrebleu")),
            ppl=_field_ci(rs, lambda r: (r.ppl or {}).get("ppl")),
            steps=st, steps_ci=mean_ci([s for s in st if s is not None]),
            speedup=speedup, speedup_lo=lo, speedup_hi=hi, speedup_note=note,
            wps=_field_ci(rs, RunData.wps), wall=_field_ci(rs, RunData.wall),
            curve=mean_curve(cs), load=_mean_load(rs), per_seed=ps, telemetry=_mean_load(rs, RunData.telemetry),
            contrasts=contrasts(ps, groups[0].per_seed) if baseline is not None and est != baseline else ()))
        if any(not c for c in cs):
            notes.append(f"{est}: {sum(not c for c in cs)} run(s) without {metric} records")
        dup = sorted({s for s in (r.seed for r in rs) if s is not None and [r.seed for r in rs].count(s) > 1})
        if dup:
            notes.append(f"{est}: several runs with seed(s) {dup} (each counted as a seed)")
    unfinished = [f"{r.name} ({r.status})" for r in runs if r.status != "done"]
    if unfinished:
        notes.append(f"not finished: {', '.join(unfinished)}")
    subsets = {(r.bleu.get("subset"), r.bleu.get("checkpoint")) for r in runs if r.bleu}
    if len(subsets) > 1:
        notes.append("BLEU from different subsets/checkpoints: " + ", ".join(sorted(f"{a}/{b}" for a, b in subsets)))
    return Comparison(metric, target, target_source, baseline, interpolate, tuple(groups), tuple(notes),
                      protocol=runs[0].protocol,
                      differences=setting_differences([r for est in order for r in by_est[est]]))

