import numpy as np
import pytest
import torch
from PIL import Image

from shared.data.sample_data import render_species_image
from shared.vision.augment import aggressive_train_aug, build_eval_transform, build_train_transform
from shared.vision.smart_crop import smart_crop, smart_crop_box


def _subject_fraction(img, box):
    a = np.asarray(img).astype(float)
    m = np.linalg.norm(a - np.array([60, 90, 50]), axis=2) > 70  # pixels unlike the background
    left, top, right, bottom = box
    return m[top:bottom, left:right].sum() / m.sum()


def test_smart_crop_keeps_off_centre_subject():
    rng = np.random.default_rng(0)
    for k in range(8):
        img = render_species_image(k, rng, (256, 208), off_centre=True)
        box = smart_crop_box(img, 0.6)
        side = box[2] - box[0]
        centre = ((256 - side) // 2, (208 - side) // 2, (256 + side) // 2, (208 + side) // 2)
        assert _subject_fraction(img, box) > 0.8
        assert _subject_fraction(img, centre) < 0.6


def test_smart_crop_uniform_image_is_centre_crop():
    img = Image.new("RGB", (200, 100), (120, 120, 120))
    assert smart_crop_box(img, 0.8) == (60, 10, 140, 90)
    assert smart_crop(img, 0.8).size == (80, 80)


def _img(seed=0, size=(80, 64)):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))


BASE = {"resize": 40, "crop": 32, "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}


def _run(aug, seed=0, smart=False):
    torch.manual_seed(seed)
    return build_train_transform(aug, 32, smart)(_img())


def test_every_train_key_has_an_effect():
    base = _run(BASE)
    assert base.shape == (3, 32, 32)
    # vertical flip with p=1 flips exactly the same random crop
    assert torch.allclose(_run({**BASE, "vertical_flip": 1.0}), base.flip(1))
    assert torch.allclose(_run({**BASE, "horizontal_flip": 1.0}), base.flip(2))
    assert torch.equal(_run({**BASE, "vertical_flip": 0.0}), base)
    assert not torch.allclose(_run({**BASE, "rotation": 20}), base)
    assert not torch.allclose(
        _run({**BASE, "color_jitter": {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.15}}), base
    )
    blurred = _run({**BASE, "blur": 1.0})
    assert blurred.std() < base.std()  # a blur smooths random noise
    assert _run({**BASE, "resize": 64}).shape == (3, 32, 32)
    assert not torch.allclose(_run({**BASE, "resize": 64}), base)
    other_norm = _run({**BASE, "normalize": {"mean": [0, 0, 0], "std": [1, 1, 1]}})
    assert torch.allclose(other_norm * 2 - 1, base, atol=1e-6)
    assert not torch.allclose(_run(BASE, smart=True), base)


def test_eval_transform_and_unknown_keys():
    t = build_eval_transform({"resize": 40, "center_crop": 32}, 32)
    a, b = t(_img()), t(_img())
    assert a.shape == (3, 32, 32) and torch.equal(a, b)  # deterministic
    with pytest.raises(ValueError, match=r"augmentation.train.vertcal_flip: unknown key"):
        build_train_transform({"vertcal_flip": 0.2}, 32)
    with pytest.raises(ValueError, match=r"augmentation.val.crop: unknown key"):
        build_eval_transform({"crop": 32}, 32)
    with pytest.raises(ValueError, match=r"color_jitter.hu: unknown key"):
        build_train_transform({"color_jitter": {"hu": 0.1}}, 32)


def test_aggressive_aug_shape_and_randomness():
    t = aggressive_train_aug(32)
    torch.manual_seed(0)
    a = t(_img())
    torch.manual_seed(1)
    assert a.shape == (3, 32, 32) and not torch.allclose(a, t(_img()))
