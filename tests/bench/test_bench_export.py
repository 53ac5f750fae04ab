"""bench/bench_export.py's pieces that decide its figures, without the 9,000-class model: the
class-conditional images, the head fitted to a target top-1 with trained-like margins (not
random-init ties), and the results file keeping other benchmarks' keys."""

import json

import numpy as np
import pytest
import torch

from bench import bench_export as be


def test_synthetic_images_are_class_conditional():
    x = be.synthetic_images(np.array([3, 3, 8]), seed=0, size=32)
    assert x.shape == (3, 3, 32, 32) and x.dtype == np.float32
    same, other = np.abs(x[0] - x[1]).mean(), np.abs(x[0] - x[2]).mean()
    assert same < 0.6 * other  # two images of class 3 are closer than one of class 8


def test_the_head_lands_near_the_target_top1_with_decided_margins():
    rng = np.random.default_rng(0)
    feats = torch.from_numpy(rng.gamma(2.0, 0.2, (400, 48)).astype(np.float32))  # post-ReLU-like
    labels = (np.arange(400) * 22) % be.CLASSES
    head, fit = be.fit_head(feats, labels)
    assert head.weight.shape == (be.CLASSES, 48)
    with torch.no_grad():
        logits = head(feats).numpy()
    m = be.margins(logits, labels)
    print(fit, m)
    assert abs(m["test_top1"] - be.TARGET_TOP1) < 0.15
    assert m["test_top1"] == pytest.approx(fit["top1_by_within_class_scale"][fit["within_class_scale"]], abs=1e-6)
    assert m["median_top1_top2_gap"] > 0.5  # decided, unlike random-init logits
    assert abs(float(head.bias.detach().mean())) < 1e-3  # centred biases: no fp16 cancellation
    # the head's weights are orthogonal to the features' mean (logits read f - mean)
    u = feats.mean(0) / feats.mean(0).norm()
    assert float((head.weight.detach() @ u).abs().max()) < 1e-3


def test_results_keep_other_benchmarks_keys(tmp_path):
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"scale": {"x": 1}, "export_9000": {"old": True}}))
    be.merge_results(out, {"mode": "mixed"})
    assert json.loads(out.read_text()) == {"scale": {"x": 1}, "export_9000": {"mode": "mixed"}}


def test_backbone_training_learns_and_leaves_the_9000_way_head():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=be.CLASSES)
    stem = model.conv_stem.weight.detach().clone()
    fig = be.train_backbone(model, seed=0, steps=40, size=32)
    print(fig)
    assert model.classifier.out_features == be.CLASSES and not model.training
    assert not torch.equal(stem, model.conv_stem.weight)  # the whole network trains, not just a head
    assert fig["steps"] == 40 and fig["image_size"] == 32 and fig["classes"] == be.TRAIN_CLASSES
    assert fig["final_loss"] < np.log(be.TRAIN_CLASSES)  # below chance-level cross-entropy
