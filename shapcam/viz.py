"""Pictures: heatmap overlays and methods x images grids, written as PNG (Pillow)."""
from __future__ import annotations

import textwrap

import numpy as np


def colormap(values: np.ndarray) -> np.ndarray:
    """Jet-like colormap: values in [0, 1] [H, W] -> RGB uint8 [H, W, 3] (blue low, red high)."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0, 1)
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).round().astype(np.uint8)


def to_rgb(image) -> np.ndarray:
    """An image [C, H, W] or [H, W] (tensor or array; float in [0, 1] after min-max, or uint8)
    -> RGB uint8 [H, W, 3]."""
    a = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        lo, hi = a.min(), a.max()
        a = ((a - lo) / (hi - lo + 1e-12) * 255).round().astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, -1)
    return a


def overlay(image, saliency, alpha: float = 0.5) -> np.ndarray:
    """Blend the colormapped saliency [H, W] in [0, 1] over the image: RGB uint8 [H, W, 3]."""
    base = to_rgb(image).astype(np.float64)
    sal = saliency.detach().cpu().numpy() if hasattr(saliency, "detach") else np.asarray(saliency)
    if sal.shape != base.shape[:2]:
        raise ValueError(f"saliency: shape {sal.shape} differs from the image's {base.shape[:2]}")
    heat = colormap(sal).astype(np.float64)
    return ((1 - alpha) * base + alpha * heat).round().astype(np.uint8)


def grid(images, columns: dict, path: str, *, scale: int = 1, row_labels=None, boxes=None) -> str:
    """Write a PNG grid: one row per image; first column the input, then one overlay per method.

    images: [N, C, H, W]; columns: {method name: maps [N, H, W]}; boxes: optional [N, 4]
    (x0, y0, x1, y1) drawn on the input; row_labels: optional text per row. Returns path.
    """
    from PIL import Image, ImageDraw

    n = len(images)
    names = list(columns)
    H, W = to_rgb(images[0]).shape[:2]
    h, w = H * scale, W * scale
    pad, head = 4, 14
    label_w = 0 if row_labels is None else 90
    canvas = Image.new("RGB", (label_w + (len(names) + 1) * (w + pad) + pad, head + n * (h + pad) + pad),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(["input"] + names):
        draw.text((label_w + pad + j * (w + pad), 1), title, fill=(0, 0, 0))
    for i in range(n):
        y = head + pad + i * (h + pad)
        tiles = [to_rgb(images[i])] + [overlay(images[i], columns[m][i]) for m in names]
        for j, tile in enumerate(tiles):
            im = Image.fromarray(tile).resize((w, h), Image.NEAREST)
            x = label_w + pad + j * (w + pad)
            canvas.paste(im, (x, y))
            if boxes is not None and j == 0:
                x0, y0, x1, y1 = [int(v) * scale for v in boxes[i]]
                draw.rectangle([x + x0, y + y0, x + x1 - 1, y + y1 - 1], outline=(0, 255, 0))
        if row_labels is not None:  # whole, wrapped to the label column (11 px a line)
            lines = textwrap.wrap(str(row_labels[i]), width=14) or [""]
            top = y + max(0, (h - 11 * len(lines)) // 2)
            for k, line in enumerate(lines[: max(1, h // 11)]):
                draw.text((2, top + 11 * k), line, fill=(0, 0, 0))
    canvas.save(path, format="PNG")
    return path


def save_overlay(image, saliency, path: str, scale: int = 1) -> str:
    """One overlay as a PNG."""
    from PIL import Image

    im = Image.fromarray(overlay(image, saliency))
    if scale != 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    im.save(path, format="PNG")
    return path
