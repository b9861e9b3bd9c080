"""Checkpoint averaging for `smx eval ... --checkpoint avg:N` (fairseq's average_checkpoints, done here).

The parameters are averaged in a subprocess (`python -m smx.checkpoint_average OUT IN...`) so that the caller never
unpickles a checkpoint; the subprocess checks each input's sha256 (recorded by smx when it saved it) right before
loading it, and the engine checks the average's hash again before it evaluates it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from smx.errors import UserError


@contextlib.contextmanager
def model_checkpoint(spec: str, files: list[Path], digests: dict[Path, str] | None = None):
    """(checkpoint file to evaluate, engine environment that makes the engine re-check its sha256 before loading):
    files[0], or for avg:N their average in a temporary directory."""
    from smx.fairseq_plugin import checksums

    digests = digests or {}
    if not spec.startswith("avg:"):
        yield files[0], verify_env({files[0]: digests[files[0]]} if files[0] in digests else {})
        return
    with tempfile.TemporaryDirectory(prefix="smx-avg-") as tmp:
        out = Path(tmp) / "checkpoint_avg.pt"
        average_checkpoints(files, out, digests)
        yield out, verify_env({out: checksums.sha256_file(out)})


def verify_env(digests: dict[Path, str]) -> dict[str, str]:
    """Engine environment asking it to check these sha256s right before unpickling (empty: nothing to check)."""
    from smx.fairseq_plugin import checksums

    return {checksums.VERIFY_ENV: checksums.verify_env_value(digests)} if digests else {}


def average_checkpoints(paths: list[Path], out: Path, digests: dict[Path, str] | None = None) -> None:
    """Average the model parameters of fairseq checkpoints in a subprocess (`python -m smx.checkpoint_average`)."""
    from smx.fairseq_plugin import env

    argv = [sys.executable, "-P", "-m", "smx.checkpoint_average", str(out), *map(str, paths)]
    r = subprocess.run(argv, capture_output=True, text=True,
                       env={**os.environ, **env.engine_env(), **verify_env(digests or {})})
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"checkpoint averaging failed: {last}")


def _average_main(out: str, *inputs: str) -> None:
    """Mean of every floating-point tensor of state['model'] over the inputs; everything else from the newest."""
    import torch

    from smx.fairseq_plugin.checksums import verify_expected

    total: dict = {}
    state = None
    for path in inputs:
        verify_expected(path)  # the sha256 smx checked, right before unpickling
        state = torch.load(path, map_location="cpu", weights_only=False)
        for k, v in state["model"].items():
            if torch.is_floating_point(v):
                total[k] = total.get(k, 0) + v.double()
    state["model"] = {k: (total[k] / len(inputs)).to(v.dtype) if k in total else v for k, v in state["model"].items()}
    torch.save(state, out)


if __name__ == "__main__":  # python -m smx.checkpoint_average OUT IN... (run by average_checkpoints)
    if len(sys.argv) < 3:
        sys.exit("usage: python -m smx.checkpoint_average OUT IN...")
    _average_main(*sys.argv[1:])
