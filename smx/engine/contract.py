"""The contract between smx and its fairseq engine processes: names, environment switches and the plugin directory,
shared by the parent (launcher) and the child (smx.fairseq_plugin). Imports neither fairseq nor torch.

    from smx.engine import contract as env
    argv = [sys.executable, "-m", "fairseq_cli.train", data, "--user-dir", str(env.user_dir()), ...]
    subprocess.run(argv, env={**os.environ, **env.engine_env()})
    # evaluation / generation: append env.EVAL_ARGS

Engine quirks and how they are handled (the fairseq-side half lives in smx/fairseq_plugin/engine.py):
- torch >= 2.6 loads checkpoints with weights_only=True by default; fairseq checkpoints pickle argparse/omegaconf
  objects and meters, so resuming and generation fail. The engine runs with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
  (engine_env()); use it only for checkpoints smx wrote itself (unpickling runs code).
- fairseq drops the last batch of an epoch when it is smaller than --required-batch-size-multiple (default 8), so
  evaluation/generation would silently skip sentences: always pass EVAL_ARGS there.
- fairseq imports --user-dir as a top-level module named after the directory (`fairseq_plugin`); the package's
  __init__.py routes that import to smx.fairseq_plugin so the models are registered exactly once (see there).
"""

from __future__ import annotations

import signal
from pathlib import Path

# Environment additions for every engine process (train, validate, generate, eval-lm).
ENGINE_ENV: dict[str, str] = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}

# Signals that ask training to save and stop (Ctrl-C, a scheduler's preemption or time limit, a closed terminal), in
# smx (smx.run.session, smx.study.parallel) and in the engine (smx.fairseq_plugin.guards). Signals within
# SAME_REQUEST_S of the first are one request: a scheduler signals every process of the job and smx forwards the one
# it got, so the engine sees two at once; a later one is a second request (interrupt at once).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SAME_REQUEST_S = 2.0

# Switches of smx.fairseq_plugin.guards: "1" = save a checkpoint and stop on the first stop signal (training);
# N = make the training loss of update N NaN (tests of the non-finite guard only).
GRACEFUL_STOP_ENV = "SMX_GRACEFUL_STOP"
NONFINITE_TEST_ENV = "SMX_TEST_NONFINITE_AT"

# Extra argv for fairseq_cli.generate / validate / eval_lm: keep the last, partial batch.
EVAL_ARGS: tuple[str, ...] = ("--required-batch-size-multiple", "1")

# Names the plugin registers (for validating recipes without importing fairseq).
TRANSLATION_MODEL = "smx_switch_transformer"
LM_MODEL = "smx_switch_lm"
# Architecture sizes `{model}_{size}` the plugin registers, per task, with their layers per encoder/decoder (the
# values fairseq's architecture functions set in translation.py / lm.py; tests/fairseq_plugin checks they agree).
# Recipes are validated against this table, so moe.*_layers errors are reported before a run starts.
ARCH_LAYERS: dict[str, dict[str, int]] = {
    "translation": {"tiny": 2, "small": 6, "base": 6, "big": 6},
    "language_modeling": {"tiny": 2, "small": 6, "base": 12},
}
TRANSLATION_CRITERION = "smx_moe_label_smoothed_cross_entropy"
LM_CRITERION = "smx_moe_cross_entropy"


def engine_env() -> dict[str, str]:
    """The environment variables to add to os.environ for an engine subprocess (a fresh dict)."""
    return dict(ENGINE_ENV)


def user_dir() -> Path:
    """The directory to pass as fairseq's --user-dir: the smx.fairseq_plugin package."""
    return Path(__file__).resolve().parents[1] / "fairseq_plugin"
