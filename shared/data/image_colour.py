"""The colours a cached image is stored in: an image carrying an ICC profile (Display P3,
Adobe RGB, a CMYK press profile) is converted to sRGB as a colour-managed browser shows
it, so a model trained on the cache sees what the demo page's users see; and transparent
areas are composited onto BACKGROUND_RGB, the one background shared with the demo page
(shared/export/web/index.html fills its canvas with the same colour before drawing)."""

from __future__ import annotations

import io

from PIL import Image, ImageCms

# Transparent pixels become this colour in training (the cache) and in the demo page
# (index.html: BACKGROUND); a canvas left unfilled would read them as black.
BACKGROUND_RGB = (255, 255, 255)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La", "P")
# Profiles whose description says sRGB are already what the cache stores.
_PROFILE_MODES = {"RGB": "RGB", "RGBA": "RGBA", "CMYK": "RGB"}


def to_srgb(img: Image.Image) -> tuple[Image.Image, str | None]:
    """`img` converted from its embedded ICC profile to sRGB (relative colorimetric, as
    browsers render matrix profiles), and a note of what was done for the index entry
    (None: no profile, or already sRGB). A profile that cannot be read or applied is
    ignored, as browsers ignore it: the pixels are taken as sRGB, and the note says so."""
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in _PROFILE_MODES:
        return img, None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        description = (ImageCms.getProfileDescription(source) or "").strip() or "an unnamed ICC profile"
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as e:
        return img, f"ignored an unreadable ICC profile ({type(e).__name__})"
    if "srgb" in description.lower() and img.mode != "CMYK":
        return img, None
    try:
        converted = ImageCms.profileToProfile(
            img,
            source,
            ImageCms.createProfile("sRGB"),
            renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
            outputMode=_PROFILE_MODES[img.mode],
        )
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as e:
        return img, f"ignored ICC profile {description!r}: it cannot convert mode {img.mode} ({type(e).__name__})"
    converted.info.pop("icc_profile", None)
    return converted, f"converted from {description}"


def on_background(img: Image.Image) -> Image.Image:
    """`img` as RGB, its transparent areas composited onto BACKGROUND_RGB."""
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, BACKGROUND_RGB)
        img.paste(rgba, mask=rgba.split()[-1])
    return img.convert("RGB")
