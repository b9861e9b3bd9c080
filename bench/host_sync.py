"""Find host synchronisations in a piece of torch code on any device, the CPU included.

On CUDA, torch.cuda.set_sync_debug_mode("error") raises at the first operation that makes the host wait for the
device. The CPU has no such switch (nothing waits there), so HostSyncs records the operations that WOULD wait on an
accelerator, at two levels, in forward and backward alike:
- torch functions (TorchFunctionMode): reading a value on the host (item, tolist, bool / int / float / index of a
  tensor, numpy) and the ops whose output size depends on values (nonzero, masked_select, unique, bincount,
  boolean-mask indexing, one-argument where, repeat_interleave without output_size);
- aten operators (TorchDispatchMode, which also sees the autograd backward): _local_scalar_dense, nonzero,
  masked_select, index with a boolean index, _unique2, bincount.

    with HostSyncs() as syncs:
        layer(x).y.backward(g)
    syncs.found  # ["nonzero (torch function)", ...], empty when the code never waits for the device
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

_HOST_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
               torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.numpy}
_VALUE_SHAPED = {torch.nonzero, torch.Tensor.nonzero, torch.masked_select, torch.Tensor.masked_select,
                 torch.unique, torch.Tensor.unique, torch.bincount, torch.Tensor.bincount, torch.argwhere}
_ATEN_SYNCS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
               aten._unique2.default, aten.bincount.default}


def _bool_index(index: object) -> bool:
    items = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _name(func: object) -> str:
    return getattr(func, "__name__", None) or str(func)


class _Functions(TorchFunctionMode):
    def __init__(self, found: list[str]) -> None:
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _HOST_READS or func in _VALUE_SHAPED:
            self.found.append(f"{_name(func)} (torch function)")
        elif func is torch.Tensor.__getitem__ and len(args) > 1 and _bool_index(args[1]):
            self.found.append("boolean-mask indexing (torch function)")
        elif func is torch.where and len(args) + len(kwargs) == 1:
            self.found.append("one-argument where (torch function)")
        elif func in (torch.repeat_interleave, torch.Tensor.repeat_interleave) and \
                isinstance(args[1] if len(args) > 1 else kwargs.get("repeats"), torch.Tensor) and \
                kwargs.get("output_size") is None:
            self.found.append("repeat_interleave without output_size (torch function)")
        return func(*args, **kwargs)


class _Operators(TorchDispatchMode):
    def __init__(self, found: list[str]) -> None:
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _ATEN_SYNCS:
            self.found.append(f"aten.{func.__name__}")
        elif func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default) and \
                _bool_index(args[1]):
            self.found.append(f"aten.{func.__name__} with a boolean index")
        return func(*args, **kwargs)


class HostSyncs:
    """Context manager; `found` lists the synchronising operations seen inside, in order (repeats kept)."""

    def __init__(self) -> None:
        self.found: list[str] = []
        self._modes = (_Functions(self.found), _Operators(self.found))

    def __enter__(self) -> "HostSyncs":
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    def summary(self) -> dict[str, int]:
        """{operation: times seen}."""
        out: dict[str, int] = {}
        for name in self.found:
            out[name] = out.get(name, 0) + 1
        return out
