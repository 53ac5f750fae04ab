"""Transforms built from the plan's augmentation sections (shared/vision/augment.py)."""

import numpy as np
import pytest
import torch
from PIL import Image

from shared.vision.augment import aggressive_train_aug, build_eval_transform, build_train_transform
from tests.unit.vision.test_smart_crop import blob_image

# The plan's sections exactly as in its teacher YAMLs.
PLAN_TRAIN = {
    "resize": 448,
    "crop": 384,
    "horizontal_flip": 0.5,
    "vertical_flip": 0.2,
    "rotation": 20,
    "color_jitter": {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.15},
    "blur": 0.1,
    "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
}
PLAN_VAL = {
    "resize": 448,
    "center_crop": 384,
    "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
}
SMALL = {"resize": 40, "crop": 32, "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}


def noise_image(w=72, h=56, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))


def seeded(t, img, seed):
    torch.manual_seed(seed)
    return t(img)


def test_plan_sections_give_the_configured_sizes():
    img = noise_image(520, 400)
    assert build_train_transform(PLAN_TRAIN, 384)(img).shape == (3, 384, 384)
    assert build_eval_transform(PLAN_VAL, 384)(img).shape == (3, 384, 384)
    # crop / center_crop win over image_size
    assert build_train_transform({**SMALL, "crop": 24}, 32)(noise_image()).shape == (3, 24, 24)
    assert build_eval_transform({"resize": 40, "center_crop": 28}, 32)(noise_image()).shape == (3, 28, 28)


def test_train_transform_is_random_but_reproducible_with_a_seed():
    t = build_train_transform({**SMALL, "horizontal_flip": 0.5, "rotation": 10}, 32)
    img = noise_image()
    assert torch.equal(seeded(t, img, 7), seeded(t, img, 7))
    assert not torch.equal(seeded(t, img, 7), seeded(t, img, 8))


def test_blur_probability_one_removes_high_frequencies():
    img = noise_image()

    def edge_energy(x):
        return (x[:, 1:, :] - x[:, :-1, :]).abs().mean() + (x[:, :, 1:] - x[:, :, :-1]).abs().mean()

    for seed in range(5):  # every draw of sigma blurs: the same crop loses edge energy
        sharp = seeded(build_train_transform(SMALL, 32), img, seed)
        blurred = seeded(build_train_transform({**SMALL, "blur": 1.0}, 32), img, seed)
        assert edge_energy(blurred) < 0.85 * edge_energy(sharp)


def test_rotation_changes_the_crop_and_zero_rotation_does_not():
    img = noise_image()
    base = seeded(build_train_transform(SMALL, 32), img, 3)
    assert torch.equal(seeded(build_train_transform({**SMALL, "rotation": 0}, 32), img, 3), base)
    assert not torch.allclose(seeded(build_train_transform({**SMALL, "rotation": 20}, 32), img, 3), base)


def test_eval_normalize_is_applied_exactly():
    img = noise_image(32, 32)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 0.125]
    out = build_eval_transform({"resize": 32, "center_crop": 32, "normalize": {"mean": mean, "std": std}}, 32)(img)
    raw = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)
    expected = (raw - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    assert torch.allclose(out, expected, atol=1e-6)


def test_smart_crop_in_eval_keeps_more_of_an_off_centre_subject():
    img, _ = blob_image((240, 160), (40, 80), radius=30)
    val = {"resize": 40, "center_crop": 32, "normalize": {"mean": [0, 0, 0], "std": [1, 1, 1]}}

    def yellow_or_red(x):  # the blob's colours have a high red channel; the background does not
        return float((x[0] > 0.7).float().mean())

    plain = build_eval_transform(val, 32, smart_crop=False)(img)
    smart = build_eval_transform(val, 32, smart_crop=True)(img)
    assert yellow_or_red(smart) > yellow_or_red(plain) + 0.1


@pytest.mark.parametrize(
    "section,match",
    [
        ({"horizontal_flip": 1.5}, r"augmentation.train.horizontal_flip: 1.5 is outside"),
        ({"vertical_flip": -0.1}, r"augmentation.train.vertical_flip"),
        ({"blur": "often"}, r"augmentation.train.blur: expected a number"),
        ({"rotation": -5}, r"augmentation.train.rotation"),
        ({"color_jitter": {"hue": 0.7}}, r"augmentation.train.color_jitter.hue"),
        ({"color_jitter": {"brightness": -1}}, r"augmentation.train.color_jitter.brightness"),
        ({"resize": 30, "crop": 32}, r"augmentation.train.resize: 30 is smaller than augmentation.train.crop"),
        ({"normalize": {"mean": [0.5, 0.5], "std": [1, 1, 1]}}, r"augmentation.train.normalize"),
        ({"normalize": {"mean": [0, 0, 0], "std": [1, 0, 1]}}, r"augmentation.train.normalize"),
        ({"normalize": {"mean": [0, 0, 0], "sd": [1, 1, 1]}}, r"augmentation.train.normalize.sd: unknown key"),
        ({"rotate": 10}, r"augmentation.train.rotate: unknown key"),
    ],
)
def test_bad_train_values_name_the_key(section, match):
    with pytest.raises(ValueError, match=match):
        build_train_transform(section, 32)


def test_bad_val_values_name_the_key():
    with pytest.raises(ValueError, match=r"augmentation.val.resize: 20 is smaller than augmentation.val.center_crop"):
        build_eval_transform({"resize": 20, "center_crop": 32}, 32)
    with pytest.raises(ValueError, match=r"augmentation.val.horizontal_flip: unknown key"):
        build_eval_transform({"horizontal_flip": 0.5}, 32)


def test_aggressive_is_stronger_than_the_standard_train_transform():
    img = noise_image(96, 80)
    norm = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    agg = aggressive_train_aug(32, normalize=norm)
    outs = torch.stack([seeded(agg, img, s) for s in range(6)])
    assert outs.shape == (6, 3, 32, 32)
    std_t = build_train_transform({"resize": 40, "crop": 32, "horizontal_flip": 0.5, "normalize": norm}, 32)
    std_outs = torch.stack([seeded(std_t, img, s) for s in range(6)])
    # mean per-pixel spread across seeds: random resized crops, RandAugment, erasing move pixels more
    assert outs.std(0).mean() > std_outs.std(0).mean()
    assert torch.isfinite(outs).all()
    assert aggressive_train_aug(32, smart_crop=True)(blob_image((240, 160), (40, 80), 30)[0]).shape == (3, 32, 32)


def test_photometric_on_gpu_switch(monkeypatch, tmp_path):
    """training.photometric_on_gpu: auto follows CUDA, true needs it (an error naming the key
    without it), false never; YAML true/false are accepted, anything else is an error."""
    from shared.config.pipeline import ConfigError
    from shared.config.student import load_student_config
    from shared.config.teacher import load_teacher_config
    from shared.vision.augment import photometric_on_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert photometric_on_gpu("auto") is False and photometric_on_gpu("false") is False
    with pytest.raises(ValueError, match="training.photometric_on_gpu: true, but no CUDA device"):
        photometric_on_gpu("true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert photometric_on_gpu("auto") is True and photometric_on_gpu("true") is True
    assert photometric_on_gpu("false") is False
    p = tmp_path / "t.yaml"
    p.write_text("training:\n  photometric_on_gpu: false\n")
    assert load_teacher_config(str(p))["training"]["photometric_on_gpu"] == "false"
    assert load_teacher_config(None)["training"]["photometric_on_gpu"] == "auto"
    assert load_student_config(None, {"training.photometric_on_gpu": True})["training"]["photometric_on_gpu"] == "true"
    with pytest.raises(ConfigError, match="training.photometric_on_gpu: 'gpu' is not one of auto, true, false"):
        load_student_config({"training": {"photometric_on_gpu": "gpu"}})
