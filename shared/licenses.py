"""Image licences: normalise the many spellings found in catalogues (iNaturalist
codes, Creative Commons URLs, free text) to canonical families, and decide which
are permissive (the plan keeps CC0, CC-BY and CC-BY-SA)."""
from __future__ import annotations

import re
from typing import Iterable

DEFAULT_ALLOWED = ("CC0", "CC-BY", "CC-BY-SA")
PUBLIC_DOMAIN = {"PD", "PUBLIC-DOMAIN", "PDM", "PUBLICDOMAIN"}


def normalize_license(raw: str | None) -> str:
    """Map a licence string to a canonical family such as 'CC-BY-SA' or 'CC0'.

    Versions and jurisdiction ports are dropped ('cc-by-sa-4.0' -> 'CC-BY-SA').
    Unrecognised text is upper-cased and returned as is, so it fails an allow-list."""
    if raw is None:
        return ""
    s = str(raw).strip().lower()
    if not s:
        return ""
    m = re.search(r"creativecommons\.org/(licenses|publicdomain)/([a-z\-]+)", s)
    if m:
        if m.group(1) == "publicdomain":
            return "CC0" if m.group(2) == "zero" else "PD"
        s = "cc-" + m.group(2)
    s = re.sub(r"[\s_]+", "-", s)
    if re.fullmatch(r"cc-?(0|zero)([-.]?\d+(\.\d+)?)?", s):
        return "CC0"
    s = re.sub(r"-?v?\d+(\.\d+)?(-[a-z]{2})?$", "", s)  # version and port: -4.0, 3.0-es
    s = re.sub(r"-+", "-", s).strip("-")
    if s in ("cc0", "cc-0", "cc-zero", "cczero"):
        return "CC0"
    if s.upper() in PUBLIC_DOMAIN or s in ("public-domain", "pd"):
        return "PD"
    if s in ("all-rights-reserved", "arr", "copyright", "c"):
        return "ALL-RIGHTS-RESERVED"
    if s.startswith("cc-") or s.startswith("cc"):
        body = s[3:] if s.startswith("cc-") else s[2:]
        parts = [p for p in re.split(r"[-]", body) if p]
        order = ["by", "nc", "nd", "sa"]
        if parts and all(p in order for p in parts):
            parts = sorted(set(parts), key=order.index)
            return "CC-" + "-".join(p.upper() for p in parts)
    return s.upper()


def allowed_set(allow: Iterable[str] | None) -> set[str]:
    return {normalize_license(a) for a in (allow if allow is not None else DEFAULT_ALLOWED)}


def is_permissive(raw: str | None) -> bool:
    return normalize_license(raw) in allowed_set(DEFAULT_ALLOWED)
