"""The classifier head rewritten for per-tensor weight quantization: per-class resolution.

TF.js quantises each weight tensor with one affine range (min, scale), so a uint8 classifier
kernel of 1280 x 9,000 gets one step size set by its largest weight, and classes whose
weights are small lose most of their resolution. Rewriting y = x W^T + b as
y = (x (W / s)^T) * s + b, with s the largest |weight| of each class, is the same function
(fp32 rounding apart) whose kernel has every class on the same [-1, 1] range: per-tensor
uint8 of that kernel is per-class (per-output-channel) quantization, and s and b (9,000
values each, 36 KB in fp16) stay fp16 beside it. On the 9,000-class bench student
(`make bench-export`, features in fp32, numpy emulation of the converter's uint8) top-1
agreement with the float model is 0.987 for the plain uint8 kernel and 0.997 for the
per-class one, both with an fp16 bias (a uint8 bias alone: 0.979).

The export applies it to every mode (fp16 and float32 are unaffected beyond rounding), so
the ONNX graph and each TF.js bundle have the same structure; check_onnx compares the
rewritten graph with the original model, so the rewrite is checked on every export."""

from __future__ import annotations

import copy

import torch


class PerClassScaledLinear(torch.nn.Module):
    """y = (x @ kernel^T) * scale + bias with kernel = W / scale[:, None] and scale the
    largest |weight| of each output class (1 for an all-zero class, which keeps it zero)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        self.kernel = torch.nn.Parameter(w / scale[:, None], requires_grad=False)
        self.scale = torch.nn.Parameter(scale, requires_grad=False)
        bias = linear.bias.detach().float() if linear.bias is not None else torch.zeros_like(scale)
        self.bias = torch.nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.kernel) * self.scale + self.bias


def classifier_name(model: torch.nn.Module) -> str:
    """The dotted name of the model's classifier: timm's pretrained_cfg["classifier"] when it
    names a Linear, else the only Linear whose outputs are the model's class count.
    ValueError naming what was found otherwise."""
    named = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if isinstance(named, str):
        try:
            if isinstance(model.get_submodule(named), torch.nn.Linear):
                return named
        except AttributeError:
            pass
    classes = getattr(model, "num_classes", None)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.out_features == classes]
    if len(linears) != 1:
        raise ValueError(
            f"cannot find the classifier head of {type(model).__name__}: pretrained_cfg names {named!r}, "
            f"Linear layers with {classes} outputs: {linears}"
        )
    return linears[0]


def with_per_class_scaled_head(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` (eval mode) whose classifier Linear is a PerClassScaledLinear; the
    original is left as it was."""
    out = copy.deepcopy(model).eval()
    name = classifier_name(out)
    parent_name, _, attr = name.rpartition(".")
    parent = out.get_submodule(parent_name) if parent_name else out
    setattr(parent, attr, PerClassScaledLinear(getattr(parent, attr)))
    return out
