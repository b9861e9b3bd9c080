"""Checkpoint averaging for `smx eval ... --checkpoint avg:N` (fairseq's average_checkpoints, done here).

The parameters are averaged in an engine subprocess (smx.engine.process: `smx.engine.entry smx.eval.average OUT
IN...`) so that the caller never
unpickles a checkpoint; the subprocess checks each input's sha256 (recorded by smx when it saved it) right before
loading it, and the engine checks the average's hash again before it evaluates it.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

from smx.engine import checksums
from smx.engine.process import engine_command, run_captured, verify_env


@contextlib.contextmanager
def model_checkpoint(spec: str, files: list[Path], digests: dict[Path, str] | None = None):
    """(checkpoint file to evaluate, engine environment that makes the engine re-check its sha256 before loading):
    files[0], or for avg:N their average in a temporary directory."""
    digests = digests or {}
    if not spec.startswith("avg:"):
        yield files[0], verify_env({files[0]: digests[files[0]]} if files[0] in digests else {})
        return
    with tempfile.TemporaryDirectory(prefix="smx-avg-") as tmp:
        out = Path(tmp) / "checkpoint_avg.pt"
        average_checkpoints(files, out, digests)
        yield out, verify_env({out: checksums.sha256_file(out)})


def average_checkpoints(paths: list[Path], out: Path, digests: dict[Path, str] | None = None) -> None:
    """Average the model parameters of fairseq checkpoints in an engine subprocess (this module's __main__)."""
    cmd = engine_command("smx.eval.average", [str(out), *map(str, paths)])
    run_captured(cmd, out.with_suffix(".log"), "checkpoint averaging", extra_env=verify_env(digests or {}))


def _average_main(out: str, *inputs: str) -> None:
    """Mean of every floating-point tensor of state['model'] over the inputs; everything else from the newest."""
    import torch

    total: dict = {}
    state = None
    for path in inputs:
        checksums.verify_expected(path)  # the sha256 smx checked, right before unpickling
        state = torch.load(path, map_location="cpu", weights_only=False)
        for k, v in state["model"].items():
            if torch.is_floating_point(v):
                total[k] = total.get(k, 0) + v.double()
    state["model"] = {k: (total[k] / len(inputs)).to(v.dtype) if k in total else v for k, v in state["model"].items()}
    torch.save(state, out)


if __name__ == "__main__":  # smx.engine.entry smx.eval.average OUT IN... (run by average_checkpoints)
    if len(sys.argv) < 3:
        sys.exit("usage: python -m smx.eval.average OUT IN...")
    _average_main(*sys.argv[1:])
