"""Cross-key recipe rules (smx.recipe.recipes): task-specific keys, layer indices, datasets, estimators and their options.

Each rule returns problem lines `key.path: message`; rules check only the sections that were built.
"""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any

import data_prep
from smx import estimators
from smx.recipe.parse import hint
from smx.recipe.schema import ARCH_LAYERS, LM_ARCHS, SECTIONS, DataConfig, MoESection, RouterConfig

TASKS = ("translation", "language_modeling")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Defaults that differ by task, applied when the key is absent (the resolved YAML then states them explicitly).
TASK_DEFAULTS = {"language_modeling": {("moe", "encoder_layers"): (), ("train", "label_smoothing"): 0.0}}
# Keys a task does not use: an error when set to anything but the default.
_UNUSED_BY = {
    "language_modeling": [("data", "source_lang"), ("data", "target_lang"), ("moe", "encoder_layers"),
                          ("model", "encoder_layers"), ("train", "label_smoothing")],
    "translation": [("data", "tokens_per_sample"), ("data", "sample_break_mode")],
}


def _per_estimator_problems(router: RouterConfig) -> list[str]:
    """router.per_estimator: every key an estimator, every option one that estimator takes."""
    names, p = list(estimators.names()), []
    for name, opts in router.per_estimator.items():
        if name not in names:
            p.append(f"router.per_estimator.{name}: unknown estimator{hint(str(name), names)} "
                     f"(choices: {', '.join(names)})")
            continue
        valid = estimators.REGISTRY[name].option_names()
        p += [f"router.per_estimator.{name}.{k}: unknown option for estimator {name!r}{hint(str(k), valid)} "
              f"(valid options: {', '.join(valid) or 'none'})" for k in opts if k not in valid]
    return p


def _estimator_problems(router: RouterConfig, moe: MoESection | None) -> list[str]:
    names = list(estimators.names())
    if router.estimator not in names:
        return [f"router.estimator: unknown estimator {router.estimator!r}{hint(router.estimator, names)}"
                f" (choices: {', '.join(names)})"]
    valid = estimators.REGISTRY[router.estimator].option_names()
    unknown = [k for k in router.options if k not in valid]
    if unknown:
        takes = f"valid options: {', '.join(valid)}" if valid else "it takes no options"
        return [f"router.options.{k}: unknown option for estimator {router.estimator!r}{hint(k, valid)} ({takes})"
                for k in unknown]
    try:
        est = estimators.get(router.estimator, **router.options)
    except (ValueError, TypeError) as e:
        return [f"router.options: {e}"]
    if moe is None:
        return []
    try:
        est.validate(moe.k, moe.num_experts, moe.score, moe.balance)
    except ValueError as e:  # e.g. a constant gate (topk normalize at k=1, the masked family at jitter_eps 0)
        able = []
        if moe.score not in est.scores:
            able = [n for n, cls in estimators.REGISTRY.items() if moe.score in cls.scores]
        elif moe.balance == "loss_free" and not est.top_k_selection:
            able = [n for n, cls in estimators.REGISTRY.items() if cls.top_k_selection]
        return [f"router.estimator: {e}" + (f" (these take it: {', '.join(able)})" if able else "")]
    return []


def cross_problems(name: Any, task: Any, seed: Any, sections: dict[str, Any]) -> list[str]:
    """Rules across keys and sections; checks only what is available (a section that failed is absent)."""
    p: list[str] = []
    if isinstance(name, str) and not _NAME_RE.match(name):
        p.append(f"name: {name!r} must be ASCII letters, digits, '.', '_' or '-' (it names run directories)")
    if isinstance(seed, int) and not 0 <= seed < 2 ** 32:
        p.append(f"seed: {seed} must be in 0..{2 ** 32 - 1} (fairseq seeds numpy with it)")
    model, moe = sections.get("model"), sections.get("moe")
    if task in TASKS:
        for sec, key in _UNUSED_BY[task]:
            obj = sections.get(sec)
            default = TASK_DEFAULTS.get(task, {}).get((sec, key), _field_default(SECTIONS[sec], key))
            if obj is not None and getattr(obj, key) != default:
                p.append(f"{sec}.{key}: not used by task {task} (remove it)")
        if task == "language_modeling" and model is not None and model.arch not in LM_ARCHS:
            p.append(f"model.arch: {model.arch!r} has no language-model variant (choices: {', '.join(LM_ARCHS)})")
    if model is not None and moe is not None and task in TASKS:
        for key in ("encoder_layers", "decoder_layers"):
            count = getattr(model, key)
            where = f"model.{key}={count}"
            if count is None:
                count = ARCH_LAYERS[task].get(model.arch)
                where = f"the {count} layers of model.arch={model.arch}"
            bad = [i for i in getattr(moe, key) if count is not None and i >= count]
            if bad:
                p.append(f"moe.{key}: layer {bad[0]} does not exist ({where}; indices start at 0)")
    optim, train, data = sections.get("optim"), sections.get("train"), sections.get("data")
    if (task == "language_modeling" and train is not None and data is not None
            and train.max_tokens < data.tokens_per_sample):
        p.append(f"train.max_tokens: {train.max_tokens} < data.tokens_per_sample={data.tokens_per_sample}: every "
                 "block would exceed the batch")
    if optim is not None and train is not None and optim.scheduler == "polynomial_decay" and not train.max_update:
        p.append("optim.scheduler: polynomial_decay decays to optim.end_lr at train.max_update; set train.max_update")
    if sections.get("data") is not None:
        p.extend(_dataset_problems(task, sections["data"]))
    if sections.get("router") is not None:
        p.extend(_per_estimator_problems(sections["router"]))
        p.extend(_estimator_problems(sections["router"], moe))
    return p


def _dataset_problems(task: Any, data: DataConfig) -> list[str]:
    """The dataset must be one data_prep knows (unless data.dir points at binarized data) and fit the task."""
    if data.dir is not None:
        return []
    names = list(data_prep.names())
    if data.dataset not in names:
        return [f"data.dataset: unknown dataset {data.dataset!r}{hint(data.dataset, names)} (choices: "
                f"{', '.join(names)}; or set data.dir to a binarized directory)"]
    info = data_prep.info(data.dataset)
    p = []
    if task in TASKS and info.task != task:
        p.append(f"data.dataset: {data.dataset} is a {info.task} dataset but task is {task}")
    for key in ("source_lang", "target_lang"):
        lang = getattr(data, key)
        if lang is not None and lang not in info.langs:
            p.append(f"data.{key}: {lang!r} is not a language of {data.dataset} ({', '.join(info.langs)})")
    return p


def _field_default(cls: type, key: str) -> Any:
    f = next(f for f in fields(cls) if f.name == key)
    return f.default
