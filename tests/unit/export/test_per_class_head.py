"""The per-class scaled classifier head (shared/export/per_class_head.py): the same function
as the model's Linear, every class's kernel on [-1, 1], and what that buys under the
converter's per-tensor uint8 (numpy emulation of tensorflowjs's affine quantization)."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from shared.export.per_class_head import PerClassScaledLinear, classifier_name, with_per_class_scaled_head


def _uint8(a: np.ndarray) -> np.ndarray:
    """tensorflowjs's affine uint8: one (min, scale) per tensor, zero exactly representable."""
    lo, hi = min(float(a.min()), 0.0), max(float(a.max()), 0.0)
    scale = (hi - lo) / 255
    lo = -round(-lo / scale) * scale
    return np.clip(np.round((a - lo) / scale), 0, 255) * scale + lo


@pytest.mark.parametrize("name", ["test_efficientnet", "test_resnet"])
def test_rewrite_is_the_same_function_and_leaves_the_model_alone(name):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scaled = with_per_class_scaled_head(model)
    head = scaled.get_submodule(classifier_name(model))
    assert isinstance(head, PerClassScaledLinear) and not scaled.training
    with torch.no_grad():
        assert torch.allclose(scaled(x), model(x), rtol=1e-5, atol=1e-5)
    assert torch.allclose(head.kernel.abs().amax(dim=1), torch.ones(7))  # each class on [-1, 1]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # original untouched
    assert isinstance(model.get_classifier(), torch.nn.Linear)


def test_an_all_zero_class_and_a_missing_bias_stay_exact():
    lin = torch.nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        lin.weight[1] = 0
    head = PerClassScaledLinear(lin)
    x = torch.randn(5, 4)
    assert torch.allclose(head(x), lin(x), atol=1e-6) and head.scale[1] == 1 and torch.all(head.bias == 0)


def test_a_model_without_a_recognisable_head_is_refused_by_name():
    class Two(torch.nn.Module):
        num_classes = 3

        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 3), torch.nn.Linear(3, 3)

    with pytest.raises(ValueError, match=r"Linear layers with 3 outputs: \['a', 'b'\]"):
        classifier_name(Two())


def test_per_class_kernel_keeps_more_top1s_than_per_tensor_under_uint8():
    """Classes whose weights are small lose most of one shared uint8 range; per class they
    keep their own. Heads with norms spread like the bench student's (0.4-1.9)."""
    rng = np.random.default_rng(0)
    classes, dim = 2000, 256
    w = rng.normal(size=(classes, dim)).astype(np.float32) * rng.uniform(0.2, 1.0, size=(classes, 1))
    x = np.maximum(rng.normal(size=(500, dim)), 0).astype(np.float32)
    ref = (x @ w.T).argmax(1)
    s = np.abs(w).max(1, keepdims=True)
    per_tensor = ((x @ _uint8(w).T).argmax(1) == ref).mean()
    per_class = ((x @ (_uint8(w / s) * s).T).argmax(1) == ref).mean()
    print(f"top-1 agreement: per tensor {per_tensor:.3f}, per class {per_class:.3f}")
    assert per_class > per_tensor
