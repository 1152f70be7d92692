"""Array plumbing: NumPy, torch tensors and __cuda_array_interface__ producers, without
requiring torch. Raw pointers for the CUDA engine are taken here and nowhere else."""
from __future__ import annotations

import sys

import numpy as np


def torch_or_none():
    """The torch module if it is already importable, else None (never a hard dependency)."""
    mod = sys.modules.get("torch")
    if mod is not None:
        return mod
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    return sys.modules["torch"]


def is_torch(x) -> bool:
    mod = sys.modules.get("torch")
    return mod is not None and isinstance(x, mod.Tensor)


def is_cuda_array(x) -> bool:
    """A device array: a CUDA torch tensor or any __cuda_array_interface__ producer."""
    if is_torch(x):
        return x.is_cuda
    return hasattr(x, "__cuda_array_interface__")


def resolve_device(device):
    """None -> None (NumPy); a string or torch.device -> torch.device."""
    if device is None:
        return None
    torch = torch_or_none()
    if torch is None:
        raise ImportError(f"device={device!r} needs torch installed; leave device=None for NumPy")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} but torch sees no CUDA device")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def cuda_pointer(x, name: str):
    """(device ordinal or None, pointer) of a C-contiguous CUDA array."""
    if is_torch(x):
        if not x.is_cuda:
            raise ValueError(f"{name}: expected a CUDA tensor, got one on {x.device}")
        if not x.is_contiguous():
            raise ValueError(f"{name}: must be contiguous (got strides {tuple(x.stride())})")
        return x.device.index, x.data_ptr()
    iface = getattr(x, "__cuda_array_interface__", None)
    if iface is None:
        raise ValueError(f"{name}: expected a CUDA array (torch tensor or __cuda_array_interface__)")
    if iface.get("strides") is not None and tuple(iface["strides"]) != _c_strides(iface):
        raise ValueError(f"{name}: must be C-contiguous (got strides {iface['strides']})")
    return None, iface["data"][0]


def cuda_stream(x) -> int:
    """The stream handle work on x should go to: torch's current stream on x's device, or the
    stream a __cuda_array_interface__ producer names (the legacy default stream otherwise)."""
    if is_torch(x):
        import torch

        return torch.cuda.current_stream(x.device).cuda_stream
    stream = x.__cuda_array_interface__.get("stream") or 0
    return 0 if stream in (1, 2) else int(stream)


def _c_strides(iface):
    item = np.dtype(iface["typestr"]).itemsize
    shape = iface["shape"]
    strides, acc = [], item
    for s in reversed(shape):
        strides.append(acc)
        acc *= s
    return tuple(reversed(strides))


def dtype_name(x) -> str:
    if is_torch(x):
        return str(x.dtype).replace("torch.", "")
    if not isinstance(x, np.ndarray) and hasattr(x, "__cuda_array_interface__"):
        return np.dtype(x.__cuda_array_interface__["typestr"]).name
    return np.asarray(x).dtype.name


def shape_of(x) -> tuple:
    if is_torch(x) or isinstance(x, np.ndarray):
        return tuple(x.shape)
    if hasattr(x, "__cuda_array_interface__"):
        return tuple(x.__cuda_array_interface__["shape"])
    return tuple(np.shape(x))


def host_numpy(x) -> np.ndarray:
    """A NumPy view (CPU torch tensors share memory) or copy (CUDA) of x."""
    if type(x) is np.ndarray:  # the common case, first (a run asks ~20 times)
        return x
    if is_torch(x):
        x = x.detach()
        return x.numpy() if x.device.type == "cpu" else x.cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__cuda_array_interface__"):
        if hasattr(x, "get"):
            return x.get()  # CuPy
        raise TypeError("cannot copy this __cuda_array_interface__ array to the host")
    return np.asarray(x)
