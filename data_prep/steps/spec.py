"""What a dataset is (DatasetInfo, the public description) and how it is built (DatasetSpec, used by the pipeline)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from smx.errors import UserError

from data_prep.steps.text import CleanSettings, TextSettings

TASKS = ("translation", "language_modeling")
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """Public facts about a dataset (data_prep.info)."""

    name: str
    task: str  # "translation" | "language_modeling"
    src_lang: str
    tgt_lang: str | None  # None for language modeling
    offline: bool  # True: works without internet (local package, PyPI/apt cache or generated)
    description: str

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task: {self.task!r} is not one of {', '.join(TASKS)}")
        if (self.task == "translation") != (self.tgt_lang is not None):
            raise ValueError(f"tgt_lang: {self.tgt_lang!r} does not fit task {self.task}")

    @property
    def langs(self) -> tuple[str, ...]:
        return (self.src_lang,) if self.tgt_lang is None else (self.src_lang, self.tgt_lang)


def moses_text(split: str, lang: str) -> TextSettings:
    """The default: the full Moses pipeline (normalize, remove non-printing, tokenize -a)."""
    return TextSettings(lang=lang)


@dataclass(frozen=True)
class DatasetSpec:
    """How to build one dataset: fetch/generate raw/{split}.{lang}, then the shared tok -> clean -> BPE -> bin steps.

    build_raw(prep, source, config) runs steps that write the raw_files() of every split and language.
    config_type: a frozen dataclass of dataset options (defaults = the documented sizes) or None.
    """

    info: DatasetInfo
    build_raw: Callable[..., None]
    default_bpe_merges: int
    text: Callable[[str, str], TextSettings] = moses_text
    clean: CleanSettings | None = None  # applied to the training split only
    config_type: type | None = None
    bpe_glossaries: tuple[str, ...] = ()
    raw_files: Callable[[str, str], list[str]] = field(default=lambda split, lang: [f"raw/{split}.{lang}"])
    takes_source: bool = True  # False for generated datasets

    def make_config(self, options: Mapping[str, Any] | None) -> Any:
        """Build the dataset's option dataclass from user options (strings from the CLI are converted)."""
        options = dict(options or {})
        if self.config_type is None:
            if options:
                raise UserError(f"dataset {self.info.name} takes no options (got {', '.join(sorted(options))})")
            return None
        fields = {f.name: f for f in dataclasses.fields(self.config_type)}
        values: dict[str, Any] = {}
        for key, value in options.items():
            if key not in fields:
                raise UserError(f"unknown option {key!r} for {self.info.name}; choices: {', '.join(fields)}")
            default = fields[key].default
            values[key] = _convert(key, value, type(default))
        try:
            return self.config_type(**values)
        except ValueError as e:
            raise UserError(f"{self.info.name}: {e}") from None


def _convert(key: str, value: Any, kind: type) -> Any:
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if isinstance(value, str):
        try:
            if kind is bool:
                if value.lower() in ("1", "true", "yes"):
                    return True
                if value.lower() in ("0", "false", "no"):
                    return False
                raise ValueError(value)
            return kind(value)
        except ValueError:
            pass
    raise UserError(f"option {key}: expected {kind.__name__}, got {value!r}")
