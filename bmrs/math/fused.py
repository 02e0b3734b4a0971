"""Elementwise kernels fused by ``torch.compile``, with a permanent eager fallback.

The noise layers' per-step math (the KL of every structure and the sampler's backward pass) is a
few dozen elementwise ops over small tensors; eager PyTorch pays a dispatcher round trip per op and
spends more time there than in the model. Inductor fuses each such function into one C++ loop
(measured 8x less time for the KL's forward and backward). Set ``BMRS_COMPILE=0`` to run eagerly;
if compilation fails (no C++ compiler, an unsupported platform) the function warns once and runs
eagerly from then on, with the same results.
"""
from __future__ import annotations

import functools
import logging
import os
import warnings
from typing import Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable)


def compile_enabled() -> bool:
    return os.environ.get("BMRS_COMPILE", "1") != "0"


def fused(fn: F) -> F:
    compiled = None
    failed = False

    @functools.wraps(fn)
    def call(*args):
        nonlocal compiled, failed
        if failed or not compile_enabled():
            return fn(*args)
        if compiled is None:
            # A CUDA build of torch on a machine without CUDA warns on every compile; the kernels are CPU ones.
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            compiled = torch.compile(fn, dynamic=None)
        try:
            return compiled(*args)
        except Exception as error:  # any compiler failure: the eager function is the same math
            failed = True
            warnings.warn(f"torch.compile failed for {fn.__name__} ({type(error).__name__}: {error}); running it eagerly")
            return fn(*args)

    return call  # type: ignore[return-value]
