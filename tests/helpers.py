"""Plain helper functions shared by several test modules (``from helpers import ...``; pytest puts
``tests/`` on ``sys.path`` because the folder has a ``conftest.py`` and no ``__init__.py``)."""

from __future__ import annotations

import torch


def assert_same(a, b, where="state"):
    """Recursive equality where tensors must be bit-identical (dtype included)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, sorted(map(str, a)), sorted(map(str, b)))
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)
