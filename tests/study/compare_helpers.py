"""Hand-built run directories (meta.json, recipe.yaml, metrics.jsonl, eval/*.json) with known statistics."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def write_run(root: Path, name: str, estimator: str, seed: int, valid: list[tuple[int, float]], *,
              task: str = "translation", dataset: str = "synthetic-mt", wps: list[float] = (1000.0,),
              wall: float = 60.0, load: dict | None = None, bleu: dict | None = None, status: str = "done",
              protocol: str | None = None, moe: dict | None = None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    meta = {"name": name, "status": status, "task": task, "dataset": dataset, "estimator": estimator, "seed": seed}
    router = {"estimator": estimator, "options": {}}
    if protocol is not None:
        meta["protocol"] = router["protocol"] = protocol
    (run / "meta.json").write_text(json.dumps(meta))
    recipe = {"name": name, "task": task, "seed": seed, "data": {"dataset": dataset, "root": "data"},
              "router": router}
    if moe is not None:
        recipe["moe"] = moe
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    lines = []
    for i, w in enumerate(wps):
        rec = {"step": 10 * (i + 1), "split": "train", "epoch": 1, "loss": 9.0, "ppl": 512.0, "wps": w,
               "wall": wall * (i + 1) / len(wps)}
        if load and i == len(wps) - 1:
            rec.update(load)
        lines.append(rec)
    for step, loss in valid:
        lines.append({"step": step, "split": "valid", "epoch": 1, "loss": loss, "nll_loss": loss - 0.5,
                      "ppl": 2.0 ** loss, "wall": wall})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if bleu is not None:
        (run / "eval").mkdir()
        (run / "eval" / "bleu.json").write_text(json.dumps(bleu))
    return run


def load_values(layers: list[str], loads: list[list[float]]) -> dict:
    return {f"moe_load_{layer}_e{i}": v for layer, row in zip(layers, loads) for i, v in enumerate(row)}
