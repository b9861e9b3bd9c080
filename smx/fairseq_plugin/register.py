"""Importing this module registers the plugin's models, architectures and criteria with fairseq (once: Python's
module cache). fairseq reaches it through the --user-dir import (see __init__.py); tests may import it directly."""

from smx.fairseq_plugin import criteria, lm, translation  # noqa: F401  (register_* decorators run on import)
from smx.fairseq_plugin.engine import install_bf16_on_any_device, warn_if_weights_only_load
from smx.fairseq_plugin.guards import install as install_guards

warn_if_weights_only_load()
install_bf16_on_any_device()  # --bf16 on GPUs and CPUs, not only TPUs
install_guards()  # checkpoint hashes, hash checks before loading, non-finite loss guard, graceful SIGINT
