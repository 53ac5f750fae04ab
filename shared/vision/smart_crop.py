"""The plan's smart crop: a saliency-based crop taken before the augmentations, so
that random crops of an off-centre plant still contain the plant.

Saliency combines the spectral residual (Hou & Zhang 2007: what is unexpected in
the image's log spectrum) with colour distinctness (how far each pixel's colour
is from the image's mean colour). The crop is the window of the requested size
with the most saliency; with no clear salient region it is a centre crop."""

from __future__ import annotations

import numpy as np
from PIL import Image

_WORK = 64  # saliency is computed on a small copy: cheap and smooth enough
_FLAT = 0.5 / 255  # variation below half a grey level is no structure
# The small copy is made by an integer box reduction first, then bilinear resampling
# by at most this factor (PIL's reducing_gap: "indistinguishable from fair
# resampling in most cases" from 3 on), instead of one bilinear pass over every
# source pixel: a third of the time on a 448 px cached photo.
_REDUCING_GAP = 3.0


def _box_blur(a: np.ndarray, k: int) -> np.ndarray:
    """Mean over a k x k window (edges repeated), over the first two axes of a 2-D
    or 3-D (h, w, channels) array."""
    pad = k // 2
    spatial = ((pad, pad), (pad, pad)) + ((0, 0),) * (a.ndim - 2)
    p = np.pad(a, spatial, mode="edge")
    c = p.cumsum(0).cumsum(1)
    c = np.pad(c, ((1, 0), (1, 0)) + ((0, 0),) * (a.ndim - 2))
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


def working_copy(img: Image.Image) -> Image.Image:
    """The small RGB copy (about 64 px on the long side) saliency is computed on."""
    w, h = img.size
    scale = _WORK / max(w, h)
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    return rgb.resize((max(8, round(w * scale)), max(8, round(h * scale))), Image.BILINEAR, reducing_gap=_REDUCING_GAP)


def saliency_map(img: Image.Image) -> np.ndarray:
    """A saliency map in [0, 1] at a working size of about 64 px on the long side
    (shape (h, w) of that small copy); all zeros for a flat image."""
    return _saliency(np.asarray(working_copy(img), dtype=np.float32) / 255.0)


def _saliency(rgb: np.ndarray) -> np.ndarray:
    gray = rgb.mean(axis=2)
    f = np.fft.fft2(gray)
    log_amp = np.log(np.abs(f) + 1e-8)
    residual = log_amp - _box_blur(log_amp, 3)
    sr = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(f)))) ** 2
    sr = _box_blur(sr, 5)
    colour = np.linalg.norm(_box_blur_rgb(rgb, 3) - rgb.reshape(-1, 3).mean(0), axis=2)
    # On a (near) flat image both terms are rounding noise; normalising would blow it up to [0, 1].
    sr_term = _norm(sr) if gray.std() > _FLAT else np.zeros_like(sr)
    colour_term = _norm(colour) if np.ptp(colour) > _FLAT else np.zeros_like(colour)
    return _norm(_box_blur(sr_term + colour_term, 5))


def _box_blur_rgb(rgb: np.ndarray, k: int) -> np.ndarray:
    return _box_blur(rgb, k)  # all channels in one pass


def _norm(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(a)


def best_window(sal: np.ndarray, win_h: int, win_w: int) -> tuple[int, int, float]:
    """Top-left (y, x) of the win_h x win_w window with the largest saliency sum,
    and how much more salient it is than the centred window (ratio >= 1)."""
    H, W = sal.shape
    c = np.pad(sal.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = c[win_h:, win_w:] - c[:-win_h, win_w:] - c[win_h:, :-win_w] + c[:-win_h, :-win_w]
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    centre = sums[(H - win_h) // 2, (W - win_w) // 2]
    return int(y), int(x), float(sums[y, x] / centre) if centre > 0 else 1.0


def smart_crop(img: Image.Image, crop_fraction: float = 0.8, min_gain: float = 1.05) -> Image.Image:
    """Crop a square of side crop_fraction * short side around the most salient region.

    Falls back to the centre crop when no window beats the centre by `min_gain`
    (e.g. a uniform image), so it never does worse than the usual centre crop."""
    return img.crop(smart_crop_box(img, crop_fraction, min_gain))


def smart_crop_box(img: Image.Image, crop_fraction: float = 0.8, min_gain: float = 1.05) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box that smart_crop takes."""
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"smart_crop: crop_fraction must be in (0, 1], got {crop_fraction}")
    w, h = img.size
    side = max(1, int(round(min(w, h) * crop_fraction)))
    small = working_copy(img)  # one small copy for the saliency and the flatness test
    sal = _saliency(np.asarray(small, dtype=np.float32) / 255.0)
    sh, sw = sal.shape
    win_h = max(1, round(side * sh / h))
    win_w = max(1, round(side * sw / w))
    y, x, gain = best_window(sal, min(win_h, sh), min(win_w, sw))
    flat = float(np.asarray(small.convert("L"), dtype=np.float32).std()) < 2.0
    if gain < min_gain or flat:  # nothing stands out: the usual centre crop
        left, top = (w - side) // 2, (h - side) // 2
    else:
        left = min(max(0, round(x * w / sw)), w - side)
        top = min(max(0, round(y * h / sh)), h - side)
    return left, top, left + side, top + side


class SmartCrop:
    """torchvision-style transform wrapper."""

    def __init__(self, crop_fraction: float = 0.8):
        if not 0.0 < crop_fraction <= 1.0:
            raise ValueError(f"SmartCrop: crop_fraction must be in (0, 1], got {crop_fraction}")
        self.crop_fraction = crop_fraction

    def __call__(self, img: Image.Image) -> Image.Image:
        return smart_crop(img, self.crop_fraction)

    def __repr__(self) -> str:
        return f"SmartCrop(crop_fraction={self.crop_fraction})"
