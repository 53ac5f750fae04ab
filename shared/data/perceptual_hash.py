"""Perceptual hashes of cached images: near-duplicate photos (one photo served at several sizes,
re-encoded, lightly recompressed) get hashes a few bits apart, while different photos differ in
about half of the 64 bits.

dhash64 is the 64-bit difference hash (Krawetz): the image as 9 x 8 grey pixels, one bit per
horizontally adjacent pair (left brighter than right). It is computed once per cached rendition
by cache_images and kept in the index and the records (field PHASH_FIELD, 16 hex digits);
NEAR_DUPLICATE_BITS is the Hamming distance up to which two images count as one photo."""

from __future__ import annotations

import numpy as np
from PIL import Image

PHASH_FIELD = "phash"  # records / cache index: 16 lowercase hex digits
PHASH_VERSION = 1  # bump when the hash changes: cached hashes of another version are recomputed
# Two renditions of one photo (resized, re-encoded at JPEG quality 60-95) stay within a few bits
# (3 measured on the bundled images at half size, quality 60); unrelated photos are ~32 bits
# apart: binomial(64, 1/2) gives P(<= 6) = 4.5e-12 a pair, ~1 chance pair among the 2.7e11
# pairs of 741k images (at 10 bits it was ~2,200 pairs, measured in make bench-scale).
NEAR_DUPLICATE_BITS = 6


def dhash64(image: Image.Image) -> int:
    """The 64-bit difference hash of `image` (any mode; alpha composited on white first, as the
    cache renders it)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    grey = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (grey[:, :-1] > grey[:, 1:]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def to_hex(value: int) -> str:
    return f"{value:016x}"


def from_hex(text: str) -> int:
    """A PHASH_FIELD value back to its integer; ValueError naming the value when it is not 16 hex digits."""
    if not isinstance(text, str) or len(text) != 16:
        raise ValueError(f"{PHASH_FIELD}: expected 16 hex digits, got {text!r}")
    return int(text, 16)


def hamming(a: int, b: int) -> int:
    """Bits in which two 64-bit hashes differ."""
    return (a ^ b).bit_count()
