"""env.py (fairseq-free), engine quirks, and exactly-once registration whatever the import path."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import smx
from smx.engine import contract as env


def _python(*parts: str) -> str:
    code = "\n".join(textwrap.dedent(part) for part in parts)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def test_env_constants():
    assert env.engine_env() == {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    env.engine_env()["X"] = "1"  # a fresh dict each time
    assert "X" not in env.engine_env()
    assert list(env.EVAL_ARGS) == ["--required-batch-size-multiple", "1"]
    assert env.user_dir() == Path(smx.__file__).resolve().parent / "fairseq_plugin"
    assert (env.user_dir() / "__init__.py").is_file()
    assert not (env.user_dir() / "models").exists()  # fairseq would import a models/ dir a second time
    assert env.ARCH_LAYERS == {"translation": {"tiny": 2, "small": 6, "base": 6, "big": 6},
                               "language_modeling": {"tiny": 2, "small": 6, "base": 12}}


def test_every_size_of_the_table_is_registered_with_fairseq():
    from fairseq.models import ARCH_MODEL_REGISTRY

    import smx.fairseq_plugin.register  # noqa: F401

    models = {"translation": env.TRANSLATION_MODEL, "language_modeling": env.LM_MODEL}
    table = {f"{models[task]}_{size}" for task, sizes in env.ARCH_LAYERS.items() for size in sizes}
    registered = {name for name in ARCH_MODEL_REGISTRY  # (fairseq also registers each model name as an arch)
                  if name.startswith(tuple(models.values())) and name not in models.values()}
    assert registered == table


def test_env_imports_neither_fairseq_nor_torch():
    out = _python("""
        import sys
        import smx.engine.contract as env
        env.engine_env(); env.user_dir()
        print(sorted(m for m in ("fairseq", "torch", "smx.moe") if m in sys.modules))
    """)
    assert out.strip() == "[]"


def test_weights_only_check():
    from smx.fairseq_plugin import engine

    assert engine.weights_only_env_ok({"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    if engine.weights_only_load_is_default():  # torch >= 2.6 (the pinned torch is)
        assert not engine.weights_only_env_ok({})


CHECK = """
    from fairseq.criterions import CRITERION_REGISTRY
    from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY
    import smx.fairseq_plugin.criteria as c, smx.fairseq_plugin.lm as l, smx.fairseq_plugin.translation as t
    assert MODEL_REGISTRY["smx_switch_transformer"] is t.SmxSwitchTransformerModel
    assert MODEL_REGISTRY["smx_switch_lm"] is l.SmxSwitchLanguageModel
    assert ARCH_MODEL_REGISTRY["smx_switch_transformer_base"] is t.SmxSwitchTransformerModel
    assert CRITERION_REGISTRY["smx_moe_cross_entropy"] is c.SmxMoECrossEntropy
    assert CRITERION_REGISTRY["smx_moe_label_smoothed_cross_entropy"] is c.SmxMoELabelSmoothedCrossEntropy
    assert "fairseq_plugin" in sys.modules
    import os
    smx_dir = os.path.dirname(os.path.realpath(smx.__file__))
    assert all(os.path.realpath(p) != smx_dir for p in sys.path if p), "user-dir parent left on sys.path"
    print("ok")
"""


def test_register_once_user_dir_first():
    """fairseq's --user-dir import (twice, as fairseq does), then the sub-package: one registration, no error."""
    out = _python("""
        import argparse, importlib, sys
        from fairseq import utils
        from smx.engine.contract import user_dir
        utils.import_user_module(argparse.Namespace(user_dir=str(user_dir())))
        utils.import_user_module(argparse.Namespace(user_dir=str(user_dir()) + "/"))
        import smx, smx.fairseq_plugin.register
        importlib.import_module("fairseq_plugin")
    """, CHECK)
    assert out.strip().endswith("ok")


def test_register_once_package_first():
    out = _python("""
        import argparse, sys
        import smx, smx.fairseq_plugin.register, smx.fairseq_plugin.translation
        from fairseq import utils
        from smx.engine.contract import user_dir
        utils.import_user_module(argparse.Namespace(user_dir=str(user_dir())))
    """, CHECK)
    assert out.strip().endswith("ok")


def test_bf16_keeps_tpu_off_unless_asked():
    """fairseq 0.12 sets tpu whenever --bf16 (then the Trainer asks torch_xla for a device). The plugin's import wraps
    fairseq's call_main (every fairseq_cli module's next step after parsing) to turn it off again unless --tpu was
    asked for, in cfg.common and in its copy cfg.distributed_training."""
    out = _python("""
        import sys
        from fairseq import options
        from fairseq.dataclass.utils import convert_namespace_to_omegaconf
        from fairseq.distributed import utils as distributed_utils
        seen = []
        distributed_utils.call_main = lambda cfg, main, **kw: seen.append(
            (cfg.common.bf16, cfg.common.tpu, cfg.distributed_training.tpu))
        import smx.fairseq_plugin.register
        from smx.fairseq_plugin.engine import install_bf16_on_any_device
        install_bf16_on_any_device()  # a second install does not wrap the wrapper
        argv = ["D", "--task", "translation", "--arch", "transformer", "--cpu"]
        for extra in (["--bf16"], ["--bf16", "--tpu"], ["--fp16"]):
            sys.argv = ["train", *argv, *extra]
            args = options.parse_args_and_arch(options.get_training_parser(), sys.argv[1:])
            seen.append(("parsed", args.tpu))
            distributed_utils.call_main(convert_namespace_to_omegaconf(args), None)
        print(seen, distributed_utils.call_main.__wrapped__.__name__)
    """)
    assert out.strip().splitlines()[-1] == ("[('parsed', True), (True, False, False), ('parsed', True), "
                                            "(True, True, True), ('parsed', False), (False, False, False)] <lambda>")
