"""`smx eval bleu|ppl RUN`: beam search + tokenized BLEU + sacreBLEU; perplexity of LM runs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from smx.eval import evaluate

app = typer.Typer(no_args_is_help=True, help="Evaluate a run: BLEU (translation) or perplexity (language modeling).")

CHECKPOINT_HELP = "best, last, or avg:N (mean of the N newest numbered checkpoints)."
TRUST_HELP = ("Load the checkpoint even if its sha256 is not the one recorded when smx saved it (checkpoints are "
              "pickles: loading one runs code).")


@app.command("bleu")
def bleu(
    run: Path = typer.Argument(..., help="Run directory."),
    checkpoint: str = typer.Option("best", help=CHECKPOINT_HELP),
    subset: Optional[str] = typer.Option(None, help="valid or test (default: the recipe's eval.subset, test)."),
    beam: Optional[int] = typer.Option(None, help="Beam size (default: the recipe's eval.beam, 4)."),
    lenpen: Optional[float] = typer.Option(None, help="Length penalty (default: the recipe's eval.lenpen, 0.6)."),
    max_tokens: Optional[int] = typer.Option(None, help="Tokens per batch (default: the recipe's eval.max_tokens)."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help=TRUST_HELP),
) -> None:
    """Beam search on every sentence of the subset; tokenized BLEU and sacreBLEU into RUN/eval/bleu.json."""
    r = evaluate.bleu(run, checkpoint=checkpoint, subset=subset, beam=beam, lenpen=lenpen, max_tokens=max_tokens,
                      trust_checkpoint=trust_checkpoint)
    console = Console(highlight=False)
    console.print(f"{r['subset']}: {r['n_sentences']} sentences, checkpoint {r['checkpoint']}, beam {r['beam']}, "
                  f"lenpen {r['lenpen']}", markup=False)
    split = r.get("bleu_tok_compound_split")
    console.print(f"BLEU (tokenized) {r['bleu_tok']:.2f}" + (f"  (compound-split {split:.2f})" if split else ""),
                  markup=False)
    console.print(f"sacreBLEU {r['sacrebleu']:.2f}  {r['sacrebleu_signature']}", markup=False)
    console.print(f"wrote {r['path']}", markup=False, soft_wrap=True)


@app.command("ppl")
def ppl(
    run: Path = typer.Argument(..., help="Run directory (a language_modeling run)."),
    checkpoint: str = typer.Option("best", help=CHECKPOINT_HELP),
    subset: Optional[str] = typer.Option(None, help="valid or test (default: the recipe's eval.subset, test)."),
    max_tokens: Optional[int] = typer.Option(None, help="Tokens per batch (default: the recipe's eval.max_tokens)."),
    context_window: int = typer.Option(0, help="fairseq eval_lm --context-window (0: score blocks independently)."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help=TRUST_HELP),
) -> None:
    """Perplexity of an LM run (fairseq eval_lm) into RUN/eval/ppl.json: base-2 loss per token, ppl, tokens."""
    r = evaluate.ppl(run, checkpoint=checkpoint, subset=subset, max_tokens=max_tokens, context_window=context_window,
                     trust_checkpoint=trust_checkpoint)
    console = Console(highlight=False)
    console.print(f"{r['subset']}: {r['tokens']} tokens, checkpoint {r['checkpoint']}: loss {r['loss']:.4f} "
                  f"(base 2), ppl {r['ppl']:.2f}", markup=False)
    console.print(f"wrote {r['path']}", markup=False, soft_wrap=True)


def register(parent: typer.Typer) -> None:
    """Add the `smx eval ...` command group."""
    parent.add_typer(app, name="eval")
