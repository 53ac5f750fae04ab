"""Smart crop (shared/vision/smart_crop.py) on synthetic photos: a textured coloured blob
placed off centre on a noisy foliage-like background."""

import numpy as np
import pytest
from PIL import Image

from shared.vision.smart_crop import SmartCrop, saliency_map, smart_crop, smart_crop_box


def blob_image(
    size: tuple[int, int], centre: tuple[int, int], radius: int, seed: int = 0
) -> tuple[Image.Image, np.ndarray]:
    """An RGB image (w, h) = size with a red/yellow striped disc at `centre`; returns it and the disc mask."""
    w, h = size
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float32)
    img[...] = (50, 95, 45)  # greenish background ...
    img += rng.normal(0, 12, (h, w, 3))  # ... with some texture, so the background is not trivially flat
    yy, xx = np.mgrid[:h, :w]
    mask = (yy - centre[1]) ** 2 + (xx - centre[0]) ** 2 <= radius**2
    stripes = ((xx + yy) // 4) % 2 == 0
    petal = np.where(stripes[..., None], (230, 40, 60), (250, 210, 40)).astype(np.float32)
    img[mask] = petal[mask]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), mask


def covered(mask: np.ndarray, box: tuple[int, int, int, int]) -> float:
    left, top, right, bottom = box
    return float(mask[top:bottom, left:right].sum() / mask.sum())


def centre_box(w: int, h: int, side: int) -> tuple[int, int, int, int]:
    return (w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side


@pytest.mark.parametrize(
    "size,centre",
    [
        ((240, 160), (40, 80)),
        ((240, 160), (200, 80)),
        ((160, 240), (80, 40)),
        ((160, 240), (80, 205)),
        ((200, 200), (45, 155)),
    ],
)
def test_smart_crop_keeps_off_centre_blob_that_centre_crop_cuts(size, centre):
    img, mask = blob_image(size, centre, radius=28)
    box = smart_crop_box(img, 0.6)
    side = round(min(size) * 0.6)
    assert box[2] - box[0] == side and box[3] - box[1] == side
    assert 0 <= box[0] and 0 <= box[1] and box[2] <= size[0] and box[3] <= size[1]
    assert covered(mask, box) > 0.9
    assert covered(mask, centre_box(*size, side)) < 0.6
    out = smart_crop(img, 0.6)
    assert out.size == (side, side)
    assert np.array_equal(np.asarray(out), np.asarray(img.crop(box)))


def test_saliency_map_peaks_on_the_blob():
    img, mask = blob_image((256, 128), (200, 64), radius=20)
    sal = saliency_map(img)
    assert sal.shape == (32, 64) and sal.dtype.kind == "f"
    assert sal.min() == pytest.approx(0.0) and sal.max() == pytest.approx(1.0)
    small = np.asarray(Image.fromarray(mask).resize(sal.shape[::-1], Image.NEAREST))
    assert sal[small].mean() > 3 * sal[~small].mean()
    y, x = np.unravel_index(int(sal.argmax()), sal.shape)
    assert abs(x - 50) <= 6 and abs(y - 16) <= 6  # the blob centre in map coordinates


@pytest.mark.parametrize("size", [(200, 100), (100, 200), (64, 64)])
def test_uniform_image_degrades_to_centre_crop(size):
    img = Image.new("RGB", size, (90, 140, 60))
    side = round(min(size) * 0.75)
    assert smart_crop_box(img, 0.75) == centre_box(*size, side)
    assert np.all(saliency_map(img) == 0)


def test_full_fraction_and_bad_fraction():
    img, _ = blob_image((120, 80), (20, 40), radius=10)
    assert smart_crop(img, 1.0).size == (80, 80)
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="crop_fraction"):
            smart_crop(img, bad)
        with pytest.raises(ValueError, match="crop_fraction"):
            SmartCrop(bad)


def test_transform_wrapper_matches_function():
    img, _ = blob_image((180, 120), (30, 60), radius=20, seed=3)
    t = SmartCrop(0.7)
    assert np.array_equal(np.asarray(t(img)), np.asarray(smart_crop(img, 0.7)))
    assert "0.7" in repr(t)
