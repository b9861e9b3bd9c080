"""smx's fairseq plugin: Switch Transformer MoE models and criteria. The ONLY smx package that imports fairseq.

Two ways this file is imported, and why registration still happens exactly once:

1. `import smx.fairseq_plugin` (or `smx.engine.contract` from a launcher): nothing here imports fairseq, so
   launchers and the CLI can read env.py without paying for (or needing) fairseq.
2. fairseq's `--user-dir <smx>/fairseq_plugin` imports this directory as a top-level module named `fairseq_plugin`
   (after putting <smx> on sys.path). Then, and only then, the block below imports smx.fairseq_plugin.register,
   which registers the models, architectures and criteria. All classes live in smx.fairseq_plugin.* modules, so
   however often and under whatever name the directory is imported, Python's module cache runs each registration
   once (no "Cannot register duplicate model"). The sys.path entry fairseq added is removed again so that smx's
   sub-packages (cli, moe, errors, ...) do not shadow top-level modules of the same name in the engine process.

In a process that already imported smx.fairseq_plugin.register (e.g. tests), a later --user-dir import is a no-op.
"""

if __name__ == "fairseq_plugin":  # imported by fairseq as the --user-dir
    import os as _os
    import sys as _sys

    def _bootstrap() -> None:
        here = _os.path.dirname(_os.path.realpath(__file__))
        smx_dir = _os.path.dirname(here)
        _sys.path[:] = [p for p in _sys.path if not (p and _os.path.realpath(p) == smx_dir)]
        try:
            import smx
        except ImportError:  # smx not installed in the engine's environment: use the tree the user dir lives in
            _sys.path.append(_os.path.dirname(smx_dir))
            import smx
        found = _os.path.dirname(_os.path.realpath(smx.__file__))
        if found != smx_dir:
            raise ImportError(
                f"--user-dir {here} belongs to the smx package at {smx_dir}, but `import smx` loads {found}; "
                "pass the --user-dir of the installed smx (smx.engine.contract.user_dir())"
            )
        import smx.fairseq_plugin.register  # noqa: F401  (registers models, architectures, criteria)

    _bootstrap()
