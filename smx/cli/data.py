"""`smx data ...`: prepare datasets (data_prep) and list / show / verify them."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

import data_prep
from smx.engine.children import stop_signals_interrupt
from smx.errors import UserError
from smx.run.writable import check_dir

app = typer.Typer(no_args_is_help=True, help="Prepare and inspect datasets (download, tokenize, BPE, binarize).")

ROOT_HELP = "Data root: datasets live in ROOT/<name>/."


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _parse_options(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--opt: expected KEY=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def _sizes(man: dict | None) -> str:
    sizes = (man or {}).get("summary", {}).get("sizes")
    if not sizes:
        return ""
    return "/".join(f"{entry['sentences']:,}" for entry in sizes.values())


def summary_tables(man: dict) -> tuple[Table, Table]:
    """(sizes table, step timings table) of a finished manifest."""
    summary = man["summary"]
    sizes = Table(title=f"{man['name']}: sizes", title_justify="left")
    langs = [man["src_lang"]] + ([man["tgt_lang"]] if man.get("tgt_lang") else [])
    sizes.add_column("split")
    sizes.add_column("sentences", justify="right")
    for lang in langs:
        sizes.add_column(f"words {lang}", justify="right")
        sizes.add_column(f"BPE tokens {lang}", justify="right")
    for split, entry in summary["sizes"].items():
        row = [split, f"{entry['sentences']:,}"]
        for lang in langs:
            row += [f"{entry[f'words_{lang}']:,}", f"{entry[f'tokens_{lang}']:,}"]
        sizes.add_row(*row)
    vocab = summary["vocab"]
    sizes.caption = (f"BPE merges {summary['bpe_merges']:,}; fairseq vocabulary {vocab['fairseq_vocab_size']:,}"
                     f"{' (joined)' if vocab.get('joined') else ''}; bin {summary['bin_bytes'] / 1e6:.1f} MB")
    timings = Table(title=f"{man['name']}: step timings", title_justify="left")
    timings.add_column("step")
    timings.add_column("seconds", justify="right")
    for step, seconds in summary["timings"].items():
        timings.add_row(step, f"{seconds:.2f}")
    timings.add_row("total", f"{summary['total_seconds']:.2f}")
    return sizes, timings


@app.command("prep")
def prep(
    name: str = typer.Argument(..., help="Dataset name (see `smx data ls`)."),
    source: str = typer.Option(None, "--source", help="Local directory/file or base URL holding the source files."),
    out: Path = typer.Option(Path("data"), "--out", help="Output root: writes OUT/<name>/."),
    bpe_merges: int = typer.Option(None, "--bpe-merges", help="Joint BPE merges (default: the dataset's; 0 = none)."),
    workers: int = typer.Option(1, "--workers", help="Worker processes for tokenization, BPE and binarization."),
    opt: list[str] = typer.Option([], "--opt", help="Dataset option KEY=VALUE (synthetic sizes, seed); repeatable."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    force: bool = typer.Option(False, "--force", help="Replace a finished dataset prepared with other settings "
                               "(the runs trained on it can then no longer be evaluated or resumed)."),
) -> None:
    """Prepare a dataset: fetch, tokenize, clean, BPE, binarize (resumable; a finished prep is skipped)."""
    options = _parse_options(opt)
    data_prep.info(name)  # an unknown name first
    check_dir(out / name, "--out")  # before any work
    with stop_signals_interrupt():  # SIGTERM / SIGHUP stop it as Ctrl-C does: fairseq-preprocess is killed too
        try:
            path = data_prep.prepare(name, root=out, source=source, bpe_merges=bpe_merges, workers=workers,
                                     progress=progress, options=options or None, force=force)
        except KeyboardInterrupt as e:  # (click would turn it into a silent exit 130)
            Console(stderr=True, highlight=False, soft_wrap=True).print(
                f"interrupted ({e or 'SIGINT'}): {out / name} stays resumable; run the command again to continue",
                markup=False)
            raise typer.Exit(130) from None
    console = _console()
    man = data_prep.manifest(name, out)
    for table in summary_tables(man):
        console.print(table)
    console.print(f"prepared {name} in {path} (fairseq data: {data_prep.bin_dir(name, out)})")


@app.command("ls")
def ls(root: Path = typer.Option(Path("data"), "--root", help=ROOT_HELP)) -> None:
    """List datasets: task, languages, offline availability, prepared state and sizes."""
    table = Table(title=f"datasets in {root}", title_justify="left")
    for col in ("name", "task", "langs", "offline?", "prepared?", "train/valid/test"):
        table.add_column(col)
    for name in data_prep.names():
        info = data_prep.info(name)
        prepared = data_prep.is_prepared(name, root)
        langs = info.src_lang + (f"-{info.tgt_lang}" if info.tgt_lang else "")
        table.add_row(name, info.task, langs, "yes" if info.offline else "no", "yes" if prepared else "no",
                      _sizes(data_prep.manifest(name, root)) if prepared else "")
    _console().print(table)


@app.command("show")
def show(name: str = typer.Argument(...), root: Path = typer.Option(Path("data"), "--root", help=ROOT_HELP)) -> None:
    """Sizes, vocabulary and step timings of a prepared dataset (from its manifest)."""
    man = data_prep.manifest(name, root)
    if not man or not man.get("complete"):
        raise UserError(f"{root / name} is not prepared; run `smx data prep {name}`")
    for table in summary_tables(man):
        _console().print(table)


@app.command("verify")
def verify(name: str = typer.Argument(...), root: Path = typer.Option(Path("data"), "--root", help=ROOT_HELP)) -> int:
    """Re-hash every file against the manifest; exit 1 if anything is missing or changed."""
    problems = data_prep.verify(name, root)
    console = _console()
    for problem in problems:
        console.print(problem, markup=False)
    if problems:
        return 1
    console.print(f"{root / name}: all files match the manifest")
    return 0


def register(parent: typer.Typer) -> None:
    """Add the `smx data ...` command group."""
    parent.add_typer(app, name="data")
