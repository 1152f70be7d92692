"""Array plumbing: NumPy, torch tensors and __cuda_array_interface__ producers, without
requiring torch. Raw pointers for the CUDA engine are taken here and nowhere else."""
from __future__ import annotations

import sys

import numpy as np


def is_real_number(v) -> bool:
    """A real scalar: a Python or NumPy int or float (not a bool, which is no number here)."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


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


def values_2d(v, B, m, where):
    """value_fn's output as float64 [B, m'] (torch stays torch, on its device), and m' (0 for
    values [B]); m: the number of outputs expected (None: any). Raises a TypeError or ValueError
    naming `where` for complex, boolean or non-numeric values and for a shape other than [B] or
    [B, m] (m >= 1)."""
    if is_torch(v):
        import torch

        if v.dtype == torch.bool or v.is_complex():
            raise TypeError(f"value_fn returned {v.dtype} values for {where}; expected real numbers")
        v = v.detach().to(torch.float64).contiguous()
    else:
        raw = host_numpy(v) if hasattr(v, "__cuda_array_interface__") else v
        kind = raw.dtype.kind if isinstance(raw, np.ndarray) else None
        if kind == "c" or (kind is None and np.iscomplexobj(raw)):  # NumPy would drop the imaginary part
            raise TypeError(f"value_fn returned complex values for {where}; expected real numbers")
        try:
            v = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"value_fn returned something that is not an array of numbers for "
                            f"{where}: {exc}") from None
    shape = tuple(v.shape)
    if len(shape) == 2 and shape[1] == 0:
        raise ValueError(f"value_fn returned shape {shape} for {where}: no outputs; expected "
                         f"[{B}] or [{B}, m] with m >= 1")
    got_m = shape[1] if len(shape) == 2 else 0
    if len(shape) not in (1, 2) or shape[0] != B or (m is not None and got_m != m):
        exp = f"[{B}] or [{B}, m]" if m is None else (f"[{B}]" if m == 0 else f"[{B}, {m}]")
        raise ValueError(f"value_fn returned shape {shape} for {where} ({B} coalitions); "
                         f"expected {exp}")
    return (v.reshape(B, 1) if len(shape) == 1 else v), got_m


def check_finite_host(v, e0, n):
    """Raise a ValueError naming the coalition of the first non-finite row of v [B, m] (e0: the
    evaluation index of row 0, None for the endpoints [empty, full])."""
    if np.isfinite(v).all():
        return
    bad = ~np.isfinite(v).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        if e0 is None:
            which = "the empty coalition" if i == 0 else "the full coalition"
        else:
            k, t = (e0 + i) // (n - 1), (e0 + i) % (n - 1) + 1
            which = f"evaluation {e0 + i} (permutation {k}, coalition of its first {t} players)"
        raise ValueError(f"value_fn returned a non-finite value ({v[i].tolist()}) for {which}")
