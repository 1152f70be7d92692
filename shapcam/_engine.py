"""Lazy loader of the native engine shapcam._C; importing shapcam never builds or crashes.

The first call that needs the extension tries to import it once and remembers a failure, so the
package falls back to the NumPy reference engine and can say why (``engine_info()``).
"""
from __future__ import annotations

import importlib

_native = None
_error: str | None = None
_tried = False


def native():
    """The shapcam._C module, or None when it is not built or failed to load."""
    global _native, _error, _tried
    if not _tried:
        _tried = True
        try:
            _native = importlib.import_module("shapcam._C")
        except ImportError as exc:  # not built, or built for another Python/platform
            _error = f"{type(exc).__name__}: {exc}"
    return _native


# What to do about a missing extension: a plain install from source builds it (pyproject.toml
# declares the build requirements, so pip's default build isolation brings pybind11).
FIX_NATIVE = ("reinstall shapcam from source with a C++17 compiler on the machine: `pip install .` "
              "in a checkout (developers: `pip install -e .`), or pass engine='reference' to use "
              "the NumPy engine")
FIX_CUDA = ("reinstall from source with the CUDA toolkit's nvcc on PATH (or CUDA_HOME set): "
            "`SHAPCAM_CUDA=1 pip install --force-reinstall --no-deps .`")


def require_native():
    mod = native()
    if mod is None:
        raise RuntimeError(f"shapcam's native engine (shapcam._C) is not available ({_error}); "
                           f"{FIX_NATIVE}")
    return mod


def cuda_built() -> bool:
    mod = native()
    return bool(mod is not None and mod.cuda_built)


def cuda_device_count() -> int:
    mod = native()
    if mod is None or not mod.cuda_built:
        return 0
    return int(mod.cuda_device_count())


def engine_info() -> dict:
    """Which engine shapcam runs on.

    Returns a dict: ``native`` (the C++ extension loaded), ``cuda_built`` (it was compiled with
    CUDA), ``cuda_available`` (a GPU can be used now), ``default_engine`` ("native" or
    "reference"), ``threads`` (CPU threads of the native engine) and ``error`` (why the extension
    did not load, or None), ``fix`` (what to run to get the missing engine, or None).
    """
    mod = native()
    fix = None
    if mod is None:
        fix = FIX_NATIVE
    elif not mod.cuda_built and _torch_sees_cuda():
        fix = "a GPU is present but shapcam._C was built without CUDA: " + FIX_CUDA
    return {
        "native": mod is not None,
        "cuda_built": cuda_built(),
        "cuda_available": cuda_device_count() > 0,
        "default_engine": "native" if mod is not None else "reference",
        "threads": int(mod.num_threads()) if mod is not None else 1,
        "error": _error,
        "fix": fix,
    }


def _torch_sees_cuda() -> bool:
    import sys

    torch = sys.modules.get("torch")  # never import torch just to answer this
    return bool(torch is not None and torch.cuda.is_available())
