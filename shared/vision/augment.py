"""Image transforms from the plan's `augmentation` config sections.

train: resize, crop (random), horizontal_flip / vertical_flip (probabilities),
rotation (degrees), color_jitter {brightness, contrast, saturation, hue}, blur
(probability of a Gaussian blur), normalize {mean, std}. val: resize,
center_crop, normalize. With `smart_crop` the saliency crop (shared/vision/smart_crop)
runs first. Unknown keys are an error naming the key.

The train transform runs on a fast path, `TrainTransform` (`fast=False` gives the
plain torchvision Compose, which the fast path keeps as `.reference`). Both draw
the same random numbers from torch's RNG in the same order (crop offsets, flips,
angle, jitter order and factors, blur), so one seed gives the same crop, flips,
rotation, jitter factors and blur sigma. The fast path
- takes the decoded RGB image as it is (no second copy) and, with smart crop, the
  saliency box CachedImageDataset remembers per image (it depends on the image alone),
- takes the random crop straight out of the source with one resampling
  (`Image.resize(box=...)`: the same filter positions as resize-then-crop; pixels
  equal, a few within 2 grey levels) instead of resizing the whole image first,
- converts to float once and does colour jitter, blur and normalisation on the
  float array, band by band of rows (cache sized), with torchvision's tensor formulas
  (its `ColorJitter` on tensors: no rounding down to 8 bits after each step as PIL's
  blends do; hue through an RGB-space form of the HSV hue shift, not PIL's 8-bit HSV
  round trip), the Gaussian blur as two 1-D passes of the same kernel (torchvision
  convolves with their 2-D outer product),
- can tell the dataset how small a JPEG may be decoded (`min_decode_side`): PIL's
  DCT-domain reduction (1/2, 1/4, 1/8) is used only when the reduced image still
  has at least the pixels the crop is resized to (never upsampling), unless
  `decode_upsample` allows more,
- with `defer_photometric`, stops after the geometry and returns the uint8 crop with
  the jitter/blur parameters it drew; `DevicePhotometric` finishes whole batches on the
  training device (the same formulas in torch), which leaves the CPU loader only
  decoding and geometry.
What differs from the Compose is rounding: per pixel within a few grey levels, the same
statistics over a batch (tests/bench/test_datapath.py compares both with `.reference`, and
the jitter with torchvision's tensor functions, on the same seeds and images)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms.functional import _compute_resized_output_size

from shared.vision.smart_crop import SmartCrop, smart_crop_box

TRAIN_KEYS = {"resize", "crop", "horizontal_flip", "vertical_flip", "rotation", "color_jitter", "blur", "normalize"}
VAL_KEYS = {"resize", "center_crop", "normalize"}
JITTER_KEYS = {"brightness", "contrast", "saturation", "hue"}
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _check(section: dict, allowed: set, where: str) -> None:
    if not isinstance(section, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(section).__name__}")
    for key in section:
        if key not in allowed:
            raise ValueError(f"{where}.{key}: unknown key (known: {', '.join(sorted(allowed))})")


def _number(section: dict, key: str, where: str, default: float, lo: float, hi: float = float("inf")) -> float:
    """section[key] as a float in [lo, hi]; the error names the key."""
    v = section.get(key, default)
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{where}.{key}: expected a number, got {v!r}") from None
    if not lo <= f <= hi:
        raise ValueError(f"{where}.{key}: {f} is outside [{lo}, {hi}]")
    return f


def _normalize(aug: dict, where: str) -> T.Normalize:
    norm = aug.get("normalize") or IMAGENET
    _check(norm, {"mean", "std"}, f"{where}.normalize")
    mean, std = list(norm.get("mean", IMAGENET["mean"])), list(norm.get("std", IMAGENET["std"]))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"{where}.normalize: need 3 means and 3 positive stds, got mean={mean} std={std}")
    return T.Normalize(mean=mean, std=std)


def _sizes(aug: dict, where: str, crop_key: str, image_size: int) -> tuple[int, int]:
    """(resize, crop); resize scales the short side and must leave room for the crop."""
    crop = int(_number(aug, crop_key, where, image_size, 1))
    resize = int(_number(aug, "resize", where, _resize_for(crop), 1))
    if resize < crop:
        raise ValueError(f"{where}.resize: {resize} is smaller than {where}.{crop_key} {crop}")
    return resize, crop


def _resize_for(size: int) -> int:
    return int(round(size * 448 / 384))  # the plan's resize:crop ratio


def build_train_transform(
    aug: dict | None,
    image_size: int,
    smart_crop: bool = False,
    *,
    fast: bool = True,
    decode_upsample: float = 1.0,
    defer_photometric: bool = False,
) -> Callable[[Image.Image], torch.Tensor]:
    """The plan's train augmentation. fast=True (default): a `TrainTransform`, the same
    augmentation as the torchvision Compose that fast=False returns (module docstring).
    decode_upsample > 1 lets the dataset decode a JPEG reduced by up to that much
    more than the crop needs (faster decoding, slightly softer crops); 1.0: never.
    defer_photometric: the transform returns the uint8 crop and its drawn jitter/blur
    parameters, for `DevicePhotometric` to finish on the training device (GPU)."""
    aug = dict(aug or {})
    where = "augmentation.train"
    _check(aug, TRAIN_KEYS, where)
    resize, crop = _sizes(aug, where, "crop", image_size)
    hflip = _number(aug, "horizontal_flip", where, 0, 0, 1)
    vflip = _number(aug, "vertical_flip", where, 0, 0, 1)
    rotation = _number(aug, "rotation", where, 0, 0, 180)
    blur = _number(aug, "blur", where, 0, 0, 1)
    jitter = None
    cj = aug.get("color_jitter")
    if cj:
        _check(cj, JITTER_KEYS, f"{where}.color_jitter")
        jitter = {k: _number(cj, k, f"{where}.color_jitter", 0, 0, 0.5 if k == "hue" else float("inf")) for k in cj}
    norm = _normalize(aug, where)
    steps: list = [SmartCrop()] if smart_crop else []
    steps += [T.Resize(resize), T.RandomCrop(crop)]
    if hflip > 0:
        steps.append(T.RandomHorizontalFlip(hflip))
    if vflip > 0:
        steps.append(T.RandomVerticalFlip(vflip))
    if rotation > 0:
        steps.append(T.RandomRotation(rotation))
    if jitter:
        steps.append(T.ColorJitter(**jitter))
    blur_kernel = max(3, (crop // 32) | 1)  # odd kernel that scales with the crop
    if blur > 0:
        # sigma from 0.5: below that a 'blurred' image is barely changed
        steps.append(T.RandomApply([T.GaussianBlur(blur_kernel, sigma=BLUR_SIGMA)], p=blur))
    steps += [T.ToTensor(), norm]
    reference = T.Compose(steps)
    if not fast:
        return reference
    return TrainTransform(
        reference,
        resize=resize,
        crop=crop,
        smart_crop=smart_crop,
        blur=blur,
        blur_kernel=blur_kernel,
        decode_upsample=decode_upsample,
        defer_photometric=defer_photometric,
    )


BLUR_SIGMA = (0.5, 2.0)


class TrainTransform:
    """build_train_transform's fast path: the augmentation of `reference` (the
    torchvision Compose it was built from), drawing the same random numbers in the same
    order, with fewer passes over the pixels (module docstring). Called on a PIL image
    like the Compose; returns a float32 (3, crop, crop) tensor."""

    def __init__(
        self,
        reference: T.Compose,
        *,
        resize: int,
        crop: int,
        smart_crop: bool,
        blur: float,
        blur_kernel: int,
        decode_upsample: float = 1.0,
        defer_photometric: bool = False,
    ):
        if not decode_upsample >= 1.0:
            raise ValueError(f"decode_upsample must be >= 1, got {decode_upsample}")
        self.reference, self.resize, self.crop = reference, resize, crop
        steps = reference.transforms
        self.smart = next((t for t in steps if isinstance(t, SmartCrop)), None) if smart_crop else None
        # the Compose's own flip and rotation objects: PIL ops, cheap, same draws
        self.geometric = [
            t for t in steps if isinstance(t, (T.RandomHorizontalFlip, T.RandomVerticalFlip, T.RandomRotation))
        ]
        self.jitter = next((t for t in steps if isinstance(t, T.ColorJitter)), None)
        self.blur_p, self.blur_kernel = float(blur), int(blur_kernel)
        norm = next(t for t in steps if isinstance(t, T.Normalize))
        self.mean = np.asarray(norm.mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(norm.std, dtype=np.float32).reshape(3, 1, 1)
        self.decode_upsample = float(decode_upsample)
        self.defer_photometric = bool(defer_photometric)

    @property
    def min_decode_side(self) -> int:
        """The short side a decoded image needs so that no crop is upsampled (divided by
        decode_upsample): the dataset may decode a JPEG reduced down to that."""
        need = self.resize / (self.smart.crop_fraction if self.smart is not None else 1.0)
        return max(1, math.ceil(need / self.decode_upsample - 1e-9))

    def smart_box(self, img: Image.Image) -> tuple[int, int, int, int] | None:
        """The smart crop's box for this (decoded) image, None without smart crop. It
        depends on the image alone: CachedImageDataset computes it once per image and
        passes it back in later epochs."""
        if self.smart is None:
            return None
        return smart_crop_box(img if img.mode == "RGB" else img.convert("RGB"), self.smart.crop_fraction)

    def __call__(self, img: Image.Image, box: tuple[int, int, int, int] | None = None):
        """img -> float32 (3, crop, crop); box: the smart crop's box, when known. With
        defer_photometric: (uint8 (3, crop, crop), float32 (PARAMS,) parameters) for
        DevicePhotometric instead."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        if self.smart is not None:
            img = img.crop(box if box is not None else smart_crop_box(img, self.smart.crop_fraction))
        img = self._resized_random_crop(img)
        for t in self.geometric:
            img = t(img)
        ops = jitter_ops(self.jitter) if self.jitter is not None else []
        sigma = None
        if self.blur_p > 0 and not self.blur_p < torch.rand(1):  # T.RandomApply's draw
            sigma = torch.empty(1).uniform_(*BLUR_SIGMA).item()  # T.GaussianBlur.get_params
        if self.defer_photometric:
            return chw_uint8(img), encode_photometric(ops, sigma)
        if sigma is None:
            return torch.from_numpy(photometric(np.asarray(img), ops, self.mean, self.std))
        x = photometric(np.asarray(img), ops)
        x = gaussian_blur_float(x, self.blur_kernel, sigma)
        x -= self.mean  # T.Normalize: sub_(mean).div_(std), the same float32 operations
        x /= self.std
        return torch.from_numpy(x)

    def device_photometric(self) -> DevicePhotometric:
        """The module that finishes deferred outputs on the device."""
        return DevicePhotometric(self.mean.ravel().tolist(), self.std.ravel().tolist(), self.blur_kernel)

    def _resized_random_crop(self, img: Image.Image) -> Image.Image:
        """T.Resize(resize) then T.RandomCrop(crop), as one resampling of the crop's box."""
        w, h = img.size
        rh, rw = _compute_resized_output_size((h, w), [self.resize], None)
        c = self.crop
        if rh < c or rw < c:
            raise ValueError(f"Required crop size {(c, c)} is larger than input image size {(rh, rw)}")
        i = j = 0
        if not (rh == c and rw == c):  # T.RandomCrop.get_params' draws
            i = int(torch.randint(0, rh - c + 1, size=(1,)).item())
            j = int(torch.randint(0, rw - c + 1, size=(1,)).item())
        if (rh, rw) == (h, w):
            return img.crop((j, i, j + c, i + c))
        sx, sy = w / rw, h / rh
        return img.resize((c, c), Image.BILINEAR, box=(j * sx, i * sy, (j + c) * sx, (i + c) * sy))

    def __repr__(self) -> str:
        return f"TrainTransform(fast path of {self.reference!r}, decode_upsample={self.decode_upsample})"


def to_float_chw(img: Image.Image) -> np.ndarray:
    """T.ToTensor as a writable float32 (3, H, W) array: uint8 / 255 in float32."""
    return photometric(np.asarray(img), [])


# Float work is done on bands of rows of about this many pixels: a band's arrays stay in
# the core's cache (a 384 px crop as a whole does not: twice as slow).
_BAND_PIXELS = 24_576


def photometric(
    a: np.ndarray, ops: list[tuple[str, float]], mean: np.ndarray | None = None, std: np.ndarray | None = None
) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (3, H, W): / 255 (T.ToTensor), then the jitter ops in
    order (jitter_ops), then with mean/std T.Normalize, band by band. A contrast op needs
    the mean grey level of the whole image as the ops before it leave it: the bands are
    then walked twice."""
    h, w = a.shape[:2]
    out = np.empty((3, h, w), dtype=np.float32)
    rows = max(1, _BAND_PIXELS // max(1, w))
    k = next((i for i, (name, _) in enumerate(ops) if name == "contrast"), len(ops))
    stages = [ops[:k], ops[k:]] if k < len(ops) else [ops]
    grey_mean = 0.0
    for si, stage in enumerate(stages):
        last = si == len(stages) - 1
        grey_sum = 0.0
        for r0 in range(0, h, rows):
            band = out[:, r0 : r0 + rows]
            if si == 0:  # deinterleaving the bytes first is faster than a strided float conversion
                np.divide(np.ascontiguousarray(a[r0 : r0 + rows].transpose(2, 0, 1)), np.float32(255), out=band)
            x = band
            for name, f in stage:
                if name == "contrast":
                    x = _blend_(x, f, np.float32(grey_mean))
                else:
                    x = _JITTER[name](x, f)
            if not last:
                grey_sum += float(_gray(x).sum(dtype=np.float64))
            elif mean is not None:
                x -= mean  # T.Normalize: sub_(mean).div_(std), the same float32 operations
                x /= std
            if x is not band:
                band[...] = x
        grey_mean = grey_sum / max(1, h * w)
    return out


_GRAY = (np.float32(0.2989), np.float32(0.587), np.float32(0.114))  # torchvision's rgb_to_grayscale


def _gray(x: np.ndarray) -> np.ndarray:
    g = x[0] * _GRAY[0]
    g += x[1] * _GRAY[1]
    g += x[2] * _GRAY[2]
    return g


def _blend_(x: np.ndarray, f: float, other) -> np.ndarray:
    """torchvision's tensor _blend(x, other, f) = clamp(f * x + (1 - f) * other), in place."""
    x *= np.float32(f)
    x += other * np.float32(1.0 - f) if isinstance(other, np.ndarray) else np.float32(1.0 - f) * other
    return np.clip(x, np.float32(0), np.float32(1), out=x)


def adjust_brightness_(x: np.ndarray, f: float) -> np.ndarray:
    """torchvision's tensor adjust_brightness (blend with black, clamp) in place."""
    x *= np.float32(f)
    if f > 1:  # f <= 1 cannot leave [0, 1]
        np.minimum(x, np.float32(1), out=x)
    return x


def adjust_contrast_(x: np.ndarray, f: float) -> np.ndarray:
    """torchvision's tensor adjust_contrast (blend with the mean grey level) in place."""
    return _blend_(x, f, np.float32(_gray(x).mean(dtype=np.float64)))


def adjust_saturation_(x: np.ndarray, f: float) -> np.ndarray:
    """torchvision's tensor adjust_saturation (blend with the grey image) in place."""
    return _blend_(x, f, _gray(x))


def adjust_hue(x: np.ndarray, hue: float) -> np.ndarray:
    """torchvision's tensor adjust_hue (RGB -> HSV, h + hue mod 1, HSV -> RGB) computed
    in RGB space without a division: value v and chroma c stay, and each channel is
    v - clamp(2c - circular distance(H, c * centre), 0, c), H being the hue times the
    chroma in sextants and the centre where on the hue circle that channel is the
    minimum, moved by -hue. x: float32 (3, H, W) in [0, 1]; returns a new array."""
    r, g, b = x
    v = np.maximum(r, g)
    np.maximum(v, b, out=v)
    c = np.minimum(r, g)
    np.minimum(c, b, out=c)
    np.subtract(v, c, out=c)
    c2 = c + c
    # H by the max channel (r, then g, then b, as torchvision); where two channels tie for
    # the max their formulas agree modulo 6c, so the masks only need to be exclusive.
    # (Masks times arrays: np.where is ten times slower than arithmetic here.)
    is_r = v == r
    is_g = v == g
    is_g &= ~is_r
    h = r - g  # max b: (r - g) + 4c
    h += c2
    h += c2
    t = g - b  # max r: g - b
    t -= h
    t *= is_r
    h += t
    t = b - r  # max g: (b - r) + 2c
    t += c2
    t -= h
    t *= is_g
    h += t
    c6 = c2 * np.float32(3)
    out = np.empty_like(x)
    zero = np.float32(0)
    for ch, centre in enumerate((3.0, 5.0, 1.0)):  # R, G, B
        d = c * np.float32((centre - 6.0 * hue) % 6.0)
        np.subtract(h, d, out=d)
        np.abs(d, out=d)  # in [0, 7c): min(d, 6c - d) is the circular distance where it matters
        np.subtract(c6, d, out=t)
        np.minimum(d, t, out=d)
        np.subtract(c2, d, out=d)
        np.minimum(d, c, out=d)
        np.maximum(d, zero, out=d)
        np.subtract(v, d, out=out[ch])
    return out


_JITTER = {
    "brightness": adjust_brightness_,
    "saturation": adjust_saturation_,
    "hue": adjust_hue,
    "contrast": adjust_contrast_,
}


def jitter_ops(jitter: T.ColorJitter) -> list[tuple[str, float]]:
    """T.ColorJitter's draws (get_params: the same calls, the same order) as the ops it
    applies, in its random order."""
    fn_idx, b, c, s, h = jitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
    named = (("brightness", b), ("contrast", c), ("saturation", s), ("hue", h))
    return [named[i] for i in fn_idx.tolist() if named[i][1] is not None]


def color_jitter_float(x: np.ndarray, jitter: T.ColorJitter) -> np.ndarray:
    """jitter(x) for a float32 (3, H, W) array in [0, 1], with T.ColorJitter's draws and
    torchvision's tensor formulas."""
    for name, f in jitter_ops(jitter):
        x = _JITTER[name](x, f)
    return x


def gaussian_kernel1d(kernel_size: int, sigma: float) -> np.ndarray:
    """torchvision's _get_gaussian_kernel1d (float32)."""
    half = (kernel_size - 1) * 0.5
    pdf = torch.exp(-0.5 * (torch.linspace(-half, half, steps=kernel_size) / sigma).pow(2))
    return (pdf / pdf.sum()).numpy()


def gaussian_blur_float(x: np.ndarray, kernel_size: int, sigma: float) -> np.ndarray:
    """T.GaussianBlur(kernel_size)(x) with that sigma and reflect padding, as a row pass
    and a column pass of the symmetric 1-D kernel, channel by channel (torchvision
    convolves with the kernels' 2-D outer product: the same filter). Returns a new array."""
    k = gaussian_kernel1d(kernel_size, sigma)
    p = kernel_size // 2
    c_, h, w = x.shape
    out = np.empty_like(x)
    tmp = np.empty((h, w), dtype=np.float32)
    for c in range(c_):
        pad = np.pad(x[c], ((0, 0), (p, p)), mode="reflect")
        rows = pad[:, p : p + w] * k[p]
        for i in range(p):  # taps i and 2p - i have the same weight
            np.add(pad[:, i : i + w], pad[:, 2 * p - i : 2 * p - i + w], out=tmp)
            tmp *= k[i]
            rows += tmp
        pad = np.pad(rows, ((p, p), (0, 0)), mode="reflect")
        col = out[c]
        np.multiply(pad[p : p + h], k[p], out=col)
        for i in range(p):
            np.add(pad[i : i + h], pad[2 * p - i : 2 * p - i + h], out=tmp)
            tmp *= k[i]
            col += tmp
    return out


# Deferred photometric augmentation: the CPU loader returns uint8 crops (a quarter of
# the bytes through shared memory) with the parameters it drew; DevicePhotometric applies
# them to the whole batch on the training device, with the same formulas.
_OPS = ("brightness", "contrast", "saturation", "hue")
PARAMS = 9  # op codes in order (4, -1: none), brightness, contrast, saturation, hue, blur sigma (0: none)


def photometric_on_gpu(setting: str, where: str = "training.photometric_on_gpu") -> bool:
    """Whether the train transform defers jitter/blur/normalisation to the GPU
    (defer_photometric + DevicePhotometric in the trainer): "auto" when CUDA is there,
    "true" (CUDA required: an error without it), "false" never."""
    if setting == "auto":
        return torch.cuda.is_available()
    if setting == "true":
        if not torch.cuda.is_available():
            raise ValueError(f"{where}: true, but no CUDA device is available; use auto or false on a CPU")
        return True
    if setting == "false":
        return False
    raise ValueError(f"{where}: {setting!r} is not one of auto, true, false")


def chw_uint8(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1)))


def encode_photometric(ops: list[tuple[str, float]], sigma: float | None) -> torch.Tensor:
    p = torch.zeros(PARAMS, dtype=torch.float32)
    p[:4] = -1
    for pos, (name, f) in enumerate(ops):
        code = _OPS.index(name)
        p[pos], p[4 + code] = code, f
    p[8] = sigma or 0.0
    return p


class DevicePhotometric(torch.nn.Module):
    """Colour jitter (each sample's drawn order and factors), Gaussian blur (each sample's
    sigma) and normalisation of a uint8 batch, on its device: TrainTransform's float path
    batched in torch (tests/bench/test_datapath.py checks they agree). forward(uint8 (N, 3, H, W),
    params (N, PARAMS)) -> float32 (N, 3, H, W)."""

    def __init__(self, mean: list[float], std: list[float], blur_kernel: int):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.blur_kernel = int(blur_kernel)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255)
        params = params.to(x.device, torch.float32)
        for pos in range(4):
            code = params[:, pos]
            for k, fn in enumerate((_t_brightness, _t_contrast, _t_saturation, _t_hue)):
                sel = (code == k).nonzero().flatten()
                if len(sel):
                    x[sel] = fn(x[sel], params[sel, 4 + k].view(-1, 1, 1, 1))
        sigma = params[:, 8]
        sel = (sigma > 0).nonzero().flatten()
        if len(sel):
            x[sel] = _t_blur(x[sel], self.blur_kernel, sigma[sel])
        return x.sub_(self.mean).div_(self.std)


def _t_gray(x: torch.Tensor) -> torch.Tensor:
    return (x[:, 0] * 0.2989 + x[:, 1] * 0.587 + x[:, 2] * 0.114).unsqueeze(1)


def _t_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * f).clamp_(0, 1)


def _t_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    mean = _t_gray(x).mean(dim=(1, 2, 3), keepdim=True)
    return (x * f + (1 - f) * mean).clamp_(0, 1)


def _t_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * f + (1 - f) * _t_gray(x)).clamp_(0, 1)


def _t_hue(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """adjust_hue's RGB-space form, one hue per sample."""
    r, g, b = x.unbind(1)
    v = torch.maximum(torch.maximum(r, g), b)
    c = v - torch.minimum(torch.minimum(r, g), b)
    c2 = c + c
    is_r = v == r
    is_g = (v == g) & ~is_r
    h = torch.where(is_r, g - b, torch.where(is_g, (b - r) + c2, (r - g) + 2 * c2))
    shift = 6.0 * hue.view(-1, 1, 1)
    out = []
    for centre in (3.0, 5.0, 1.0):
        d = (h - c * torch.remainder(centre - shift, 6.0)).abs_()
        d = torch.minimum(d, 3 * c2 - d)
        out.append(v - torch.minimum((c2 - d).clamp_(min=0), c))
    return torch.stack(out, 1)


def _t_blur(x: torch.Tensor, kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """Reflect-padded separable Gaussian blur, one sigma per sample (torchvision's kernel)."""
    n, ch, h, w = x.shape
    half = (kernel_size - 1) * 0.5
    pos = torch.linspace(-half, half, kernel_size, device=x.device)
    k = torch.exp(-0.5 * (pos[None, :] / sigma[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(ch, 0)  # (n * ch, k)
    p = kernel_size // 2
    y = torch.nn.functional.pad(x.reshape(1, n * ch, h, w), (p, p, p, p), mode="reflect")
    y = torch.nn.functional.conv2d(y, k.view(n * ch, 1, 1, -1), groups=n * ch)
    y = torch.nn.functional.conv2d(y, k.view(n * ch, 1, -1, 1), groups=n * ch)
    return y.view(n, ch, h, w)


def build_eval_transform(
    aug: dict | None, image_size: int, smart_crop: bool = False
) -> Callable[[Image.Image], torch.Tensor]:
    aug = dict(aug or {})
    _check(aug, VAL_KEYS, "augmentation.val")
    resize, crop = _sizes(aug, "augmentation.val", "center_crop", image_size)
    steps: list = [SmartCrop()] if smart_crop else []
    steps += [T.Resize(resize), T.CenterCrop(crop), T.ToTensor(), _normalize(aug, "augmentation.val")]
    return T.Compose(steps)


def aggressive_train_aug(
    image_size: int, normalize: dict | None = None, smart_crop: bool = False
) -> Callable[[Image.Image], torch.Tensor]:
    """The plan's "augmentation aggressive" for student fine-tuning: random resized
    crops, flips, rotation, strong colour jitter, RandAugment (timm) and erasing."""
    from timm.data.auto_augment import rand_augment_transform

    norm = normalize or IMAGENET
    steps: list = [SmartCrop()] if smart_crop else []
    steps += [
        T.RandomResizedCrop(image_size, scale=(0.35, 1.0)),
        T.RandomHorizontalFlip(0.5),
        T.RandomVerticalFlip(0.2),
        T.RandomRotation(30),
        T.ColorJitter(0.4, 0.4, 0.4, 0.1),
        rand_augment_transform("rand-m9-mstd0.5", {"translate_const": max(1, int(image_size * 0.45))}),
        T.ToTensor(),
        T.Normalize(norm["mean"], norm["std"]),
        T.RandomErasing(p=0.25),
    ]
    return T.Compose(steps)
