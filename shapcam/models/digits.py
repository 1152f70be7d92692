"""The bundled demo: a small CNN trained by the project on cluttered digit canvases.

Data: scikit-learn's bundled handwritten digits (8x8, load_digits), scaled to 20-32 px and pasted
at a random place on a 64x64 canvas cluttered with fragments of other digits and strokes; the
digit's true box is known (objects cover at most a quarter of the image). Everything is a pure
function of a seed. Digit instances are split once: training canvases use a fixed random 80% of
the instances, the held-out canvases (bundled as shapcam/data/digits_heldout.npz)
the other 20%, never seen in training.

    python -m shapcam.models.train_digits      # regenerates the data and the weights
"""
from __future__ import annotations

import os

import numpy as np

CANVAS = 64
CLASSES = [str(d) for d in range(10)]
TARGET_LAYER = "features.10"  # the last ReLU: a 64 x 8 x 8 feature map, 64 players
DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
WEIGHTS = os.path.join(DATA_DIR, "digits_cnn.pt")
WEIGHTS_VGG = os.path.join(DATA_DIR, "digits_vgg.pt")
HELDOUT = os.path.join(DATA_DIR, "digits_heldout.npz")
# Digit instances are split once, at random (seed 0): 1437 for training, 360 held out.
_SPLIT = np.random.default_rng(0).permutation(1797)
TRAIN_DIGITS = np.sort(_SPLIT[:1437])
HELDOUT_DIGITS = np.sort(_SPLIT[1437:])


def _trunk():
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
    )


def build_model(arch: str = "cnn"):
    """The digits CNNs: the same 4 conv layers (the last feature map is 64 x 8 x 8), then

    - ``"cnn"``: global average pooling and one Linear — additive over positions (with the logit,
      Shapley values equal CAM);
    - ``"vgg"``: VGG16's kind of head — 2x2 max pooling (non-overlapping cells), flatten, two
      fully connected layers with a ReLU between — which mixes positions, where Shapley values
      and gradients part ways.
    """
    from torch import nn

    if arch not in ("cnn", "vgg"):
        raise ValueError(f"arch: 'cnn' or 'vgg', got {arch!r}")

    class DigitsCNN(nn.Module):
        default_cam_layer = "features"  # the last ReLU's 64 x 8 x 8 map (loading.default_layer)

        def __init__(self):
            super().__init__()
            self.features = _trunk()
            if arch == "cnn":
                self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
            else:
                self.classifier = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 4 * 4, 128),
                                                nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 10))

        def forward(self, x):
            return self.classifier(self.features(x))

    return DigitsCNN()


def load_model(path: str | None = None, device="cpu", arch: str = "cnn"):
    """A bundled digits CNN (``arch`` "cnn" or "vgg", see build_model) with its trained weights,
    in eval mode."""
    import torch

    path = path or (WEIGHTS if arch == "cnn" else WEIGHTS_VGG)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing; run `python -m shapcam.models.train_digits "
                                f"--arch {arch}`")
    model = build_model(arch)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval().to(device)


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(img))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def make_canvases(n: int, seed: int, digit_ids) -> dict:
    """n cluttered canvases: images [n, 64, 64] uint8, labels [n], boxes [n, 4] (x0, y0, x1, y1,
    pixel edges, exclusive end)."""
    imgs, labels = _digits()
    ids = np.asarray(list(digit_ids))
    rng = np.random.default_rng(seed)
    out = np.zeros((n, CANVAS, CANVAS), np.float32)
    lab = np.zeros(n, np.int64)
    boxes = np.zeros((n, 4), np.int64)
    for i in range(n):
        c = rng.uniform(0, 0.15, size=(CANVAS, CANVAS)).astype(np.float32)
        for _ in range(rng.integers(3, 7)):  # fragments of other digits
            src = imgs[rng.choice(ids)]
            y, x = rng.integers(0, 5, size=2)
            frag = _resize(src[y:y + 4, x:x + 4], int(rng.integers(8, 15)))
            fy, fx = rng.integers(0, CANVAS - frag.shape[0], size=2)
            region = c[fy:fy + frag.shape[0], fx:fx + frag.shape[1]]
            np.maximum(region, frag * rng.uniform(0.3, 0.8), out=region)
        for _ in range(rng.integers(1, 3)):  # strokes
            y0, x0, y1, x1 = rng.integers(0, CANVAS, size=4)
            steps = max(abs(y1 - y0), abs(x1 - x0)) + 1
            ys = np.linspace(y0, y1, steps).round().astype(int)
            xs = np.linspace(x0, x1, steps).round().astype(int)
            c[ys, xs] = np.maximum(c[ys, xs], rng.uniform(0.4, 0.9))
        k = rng.choice(ids)
        size = int(rng.integers(20, 33))
        digit = np.clip(_resize(imgs[k], size), 0, 1)
        y, x = rng.integers(0, CANVAS - size + 1, size=2)
        region = c[y:y + size, x:x + size]
        np.maximum(region, digit, out=region)
        on = np.argwhere(digit > 0.2)
        (dy0, dx0), (dy1, dx1) = on.min(0), on.max(0) + 1
        boxes[i] = (x + dx0, y + dy0, x + dx1, y + dy1)
        lab[i] = labels[k]
        out[i] = c
    return {"images": (np.clip(out, 0, 1) * 255).round().astype(np.uint8), "labels": lab, "boxes": boxes}


def to_tensor(images_u8):
    """uint8 canvases [N, 64, 64] -> float images [N, 1, 64, 64] in [0, 1] (the model's input)."""
    import torch

    return torch.from_numpy(np.asarray(images_u8, dtype=np.float32) / 255.0)[:, None]


def load_heldout(path: str | None = None) -> dict:
    """The bundled held-out canvases: images [N, 64, 64] uint8, labels [N], boxes [N, 4]."""
    path = path or HELDOUT
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
