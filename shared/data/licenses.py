"""Image licences: parse the many spellings found in catalogues (iNaturalist codes,
Creative Commons URLs, long names, free text) into a canonical family and version,
and decide which are allowed (the plan keeps CC0, CC-BY and CC-BY-SA).

One parser serves both the catalogue's licence strings and the configured
allow-list, and the allow-list is matched on the parsed family, never on a
substring. The parser is strict: every word of the string must be part of the
licence vocabulary below, otherwise the string is UNKNOWN and never allowed. A
non-commercial (NC) or no-derivatives (ND) term is recognised wherever it stands
and however it is spelled (``nc``, ``NonCommercial``, ``non commercial``,
``NoDerivs``, ``no derivatives``, ``sin obra derivada``, glued as in ``ccbyncsa``,
after the version, after a URL), so a string with a permissive family and an
NC/ND term parses as the NC/ND family."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

DEFAULT_ALLOWED = ("CC0", "CC-BY", "CC-BY-SA")
UNKNOWN = "UNKNOWN"
ALL_RIGHTS_RESERVED = "ALL-RIGHTS-RESERVED"
PUBLIC_DOMAIN = "PD"
# Real licence strings are under ~150 characters; longer text is prose, not a licence.
MAX_LENGTH = 512

# Word sequences and the licence term each one names. Matching is on whole words after
# the string is split (and glued words such as "ccbyncsa" are split into these).
_PHRASES: dict[tuple[str, ...], str] = {
    ("cc",): "CC",
    ("creativecommons",): "CC",
    ("creative", "commons"): "CC",
    ("by",): "BY",
    ("attribution",): "BY",
    ("reconocimiento",): "BY",
    ("atribucion",): "BY",
    ("sa",): "SA",
    ("share", "alike"): "SA",
    ("compartir", "igual"): "SA",
    ("nc",): "NC",
    ("non", "commercial"): "NC",
    ("no", "commercial"): "NC",
    ("not", "commercial"): "NC",
    ("no", "comercial"): "NC",
    ("non", "comercial"): "NC",
    ("nd",): "ND",
    ("no", "derivatives"): "ND",
    ("no", "derivative"): "ND",
    ("no", "derivs"): "ND",
    ("no", "deriv"): "ND",
    ("no", "derivative", "works"): "ND",
    ("non", "derivative"): "ND",
    ("non", "derivatives"): "ND",
    ("sin", "obra", "derivada"): "ND",
    ("sin", "obras", "derivadas"): "ND",
    ("sin", "derivadas"): "ND",
    ("zero",): "ZERO",
    ("public", "domain"): "PD",
    ("publicdomain",): "PD",
    ("pd",): "PD",
    ("pdm",): "PD",
    ("dominio", "publico"): "PD",
    ("all", "rights", "reserved"): "ARR",
    ("copyright",): "ARR",
    ("arr",): "ARR",
    ("c",): "ARR",
    # no term: the legal code's title ("Attribution 4.0 International Public License")
    ("public", "license"): "",
    ("public", "licence"): "",
}
_LONGEST_PHRASE = max(len(p) for p in _PHRASES)
# Words that carry no licence meaning in the usual spellings (URL parts, the "International"
# of long names, the "use only" of "non-commercial use only"). Kept short on purpose: a word
# that could change the meaning ("except", "allowed", "commercial" alone) must stay unknown.
_FILLER = frozenset(
    {
        "http",
        "https",
        "www",
        "org",
        "licenses",
        "license",
        "licence",
        "licences",
        "licensed",
        "legalcode",
        "deed",
        "international",
        "internacional",
        "unported",
        "generic",
        "universal",
        "version",
        "dedication",
        "mark",
        "use",
        "only",
    }
)
_VOCABULARY = frozenset(w for p in _PHRASES for w in p) | _FILLER
# Glued tokens are split only into words of 2+ letters, so a stray "c" never appears inside one.
_SEGMENT_WORDS = tuple(sorted((w for w in _VOCABULARY if len(w) >= 2), key=len, reverse=True))
# Jurisdiction ports and deed languages ("3.0-es", ".../3.0/es/deed.pt_BR"), accepted only
# after a version, "deed" or "legalcode". "no" (Norway's port) is left out: it reads as a
# dangling negation ("CC BY 4.0 no"), so such a string is refused.
_CODES = (
    frozenset(
        {
            "af",
            "am",
            "ar",
            "at",
            "au",
            "az",
            "be",
            "bg",
            "bn",
            "br",
            "ca",
            "ch",
            "cl",
            "cn",
            "co",
            "cr",
            "cs",
            "cy",
            "cz",
            "da",
            "de",
            "dk",
            "ec",
            "ee",
            "eg",
            "el",
            "en",
            "eo",
            "es",
            "et",
            "eu",
            "fa",
            "fi",
            "fr",
            "fy",
            "ga",
            "ge",
            "gl",
            "gr",
            "gt",
            "he",
            "hi",
            "hk",
            "hr",
            "hu",
            "id",
            "ie",
            "il",
            "in",
            "is",
            "it",
            "ja",
            "jo",
            "jp",
            "ka",
            "ko",
            "kr",
            "lt",
            "lu",
            "lv",
            "mk",
            "ms",
            "mt",
            "mx",
            "my",
            "nl",
            "nn",
            "nz",
            "oc",
            "pe",
            "ph",
            "pl",
            "pr",
            "pt",
            "ro",
            "rs",
            "ru",
            "se",
            "sg",
            "si",
            "sk",
            "sl",
            "sq",
            "sr",
            "sv",
            "th",
            "tr",
            "tw",
            "ug",
            "uk",
            "ur",
            "us",
            "ve",
            "vi",
            "vn",
            "za",
            "zh",
            "igo",
            "scotland",
            "hans",
            "hant",
            "latn",
        }
    )
    - _VOCABULARY
)
_VERSIONS = {
    "1": "1.0",
    "1.0": "1.0",
    "2": "2.0",
    "2.0": "2.0",
    "2.1": "2.1",
    "2.5": "2.5",
    "3": "3.0",
    "3.0": "3.0",
    "4": "4.0",
    "4.0": "4.0",
}
# Loose spellings (typos, other languages, suffixes) that flag a restriction even when the
# string is refused as UNKNOWN, so the reason says what was seen. Searched with separators removed.
_NC_LOOSE = re.compile(r"no[nt]?comm?er|nichtkommer|pasdutilisationcommer")
_ND_LOOSE = re.compile(r"no[nt]?deriv|sinobras?deriv|keinebearb|pasdemodif")
# The CC licence chooser appends this to the URLs it hands out.
_CHOOSER_REF = re.compile(r"\?ref=chooser-v\d+\b")
# GBIF writes versions with an underscore: "CC_BY_4_0", "CC0_1_0".
_UNDERSCORE_VERSION = re.compile(r"(?<=[_\s-])(\d)_(\d)(?![\d.])")
_TOKEN = re.compile(r"\d+(?:\.\d+)*|[^\W\d_]+")


@dataclass(frozen=True)
class License:
    """A parsed licence string.

    family: "CC-BY", "CC-BY-SA", "CC-BY-NC-ND", ..., "CC0", "PD" (public-domain mark),
    "ALL-RIGHTS-RESERVED", UNKNOWN when the string cannot be classified unambiguously,
    or "" when no licence was given. version: "4.0", "1.0", ... or None when the string
    names none. restrictions: the NC/ND terms seen anywhere in the string, also when the
    family is UNKNOWN. reason: why the family is UNKNOWN or empty; "" otherwise."""

    family: str
    version: str | None = None
    restrictions: frozenset[str] = frozenset()
    reason: str = ""


def _canonical_text(raw: str) -> str:
    """Fold width, case and accents, and drop invisible format characters (zero-width
    spaces, soft hyphens) so "ＮＣ", "N\u200bC" and "Nc" all read "nc"."""
    s = unicodedata.normalize("NFKD", raw.replace("\u00a9", " copyright "))  # compatibility forms, accents apart
    s = "".join(ch for ch in s if not unicodedata.combining(ch) and unicodedata.category(ch) != "Cf")
    return s.casefold()


@lru_cache(maxsize=4096)
def _segment(token: str) -> tuple[str, ...] | None:
    """Split a glued token ("ccbyncsa") into vocabulary words, fewest pieces first;
    None when it cannot be split entirely into known words."""
    best: list[tuple[str, ...] | None] = [None] * (len(token) + 1)
    best[0] = ()
    for i in range(len(token)):
        done = best[i]
        if done is None:
            continue
        for w in _SEGMENT_WORDS:
            if token.startswith(w, i):
                j, there = i + len(w), best[i + len(w)]
                if there is None or len(done) + 1 < len(there):
                    best[j] = done + (w,)
    return best[-1]


def _words(text: str) -> list[str]:
    """Numbers ("4.0") and words; a glued word is split when it is all vocabulary."""
    out: list[str] = []
    for tok in _TOKEN.findall(text):
        if tok[0].isdigit() or tok in _VOCABULARY:
            out.append(tok)
        else:
            out.extend(_segment(tok) or (tok,))
    return out


def _loose_restrictions(text: str) -> set[str]:
    squashed = re.sub(r"[\W_]+", "", text)
    found = set()
    if _NC_LOOSE.search(squashed):
        found.add("NC")
    if _ND_LOOSE.search(squashed):
        found.add("ND")
    return found


def _describe(restrictions: Iterable[str]) -> str:
    names = {"NC": "non-commercial", "ND": "no-derivatives"}
    r = sorted(restrictions)
    return f"; carries a {' and '.join(names[x] for x in r)} term" if r else ""


def parse_license(raw: object) -> License:
    """Parse one licence string into its family, version and NC/ND terms (cached: a catalogue
    of 741k records holds a few dozen distinct strings; License is frozen, so sharing is safe).

    Anything that cannot be classified unambiguously is UNKNOWN, with the reason:
    an unrecognised word, a version Creative Commons never published, two versions,
    contradictory terms (CC0 with NC, ND with SA, all rights reserved with CC),
    licence terms without a Creative Commons marker ("by-nc", "Attribution")."""
    return _parse_license(None if raw is None else str(raw))


@lru_cache(maxsize=65536)
def _parse_license(raw_text: str | None) -> License:
    """The License of one licence text (parse_license's cached worker).

    Long: one left-to-right scan whose state (after a version, after "cc") carries from
    word to word, followed by the verdict over what the scan collected."""
    if raw_text is None:
        return License("", reason="no licence given")
    if not raw_text.strip():
        return License("", reason="no licence given")
    if len(raw_text) > MAX_LENGTH:
        return License(UNKNOWN, reason=f"longer than {MAX_LENGTH} characters")
    text = _UNDERSCORE_VERSION.sub(r"\1.\2", _CHOOSER_REF.sub(" ", _canonical_text(raw_text)))
    words = _words(text)

    terms: list[str] = []
    versions: list[str] = []
    bad_versions: list[str] = []
    unknown: list[str] = []
    after_version = False  # a port or language code may follow a version, "deed" or "legalcode"
    just_cc = False  # the previous word(s) said "cc": a "0" now means CC0
    i = 0
    while i < len(words):
        w = words[i]
        was_cc, just_cc = just_cc, False
        if w[0].isdigit():
            if w == "0" and was_cc:
                terms.append("ZERO")  # "cc0", "CC 0", "Creative Commons 0"
                after_version = False
            else:
                (versions if w in _VERSIONS else bad_versions).append(_VERSIONS.get(w, w))  # bad: "5.0", a year
                after_version = True
            i += 1
            continue
        if w == "v" and i + 1 < len(words) and words[i + 1][0].isdigit():
            i += 1  # "v4.0"
            continue
        for n in range(_LONGEST_PHRASE, 0, -1):
            term = _PHRASES.get(tuple(words[i : i + n]))
            if term is not None:
                if term:
                    terms.append(term)
                i += n
                after_version, just_cc = False, term == "CC"
                break
        else:
            if w in _FILLER:
                after_version = w in ("deed", "legalcode")
            elif after_version and w in _CODES:
                pass  # jurisdiction port or deed language; another may follow ("pt", "br")
            else:
                unknown.append(w)
                after_version = False
            i += 1

    found = set(terms)
    restrictions = frozenset((found & {"NC", "ND"}) | _loose_restrictions(text))
    version = versions[0] if versions else None

    def refuse(why: str) -> License:
        return License(UNKNOWN, version, restrictions, why + _describe(restrictions))

    if unknown:
        shown = ", ".join(repr(u[:24]) for u in unknown[:5])
        return refuse(f"unrecognised word{'s' if len(unknown) > 1 else ''} {shown}")
    if bad_versions:
        return refuse(f"{bad_versions[0][:24]!r} is not a version Creative Commons published")
    if len(set(versions)) > 1:
        return refuse(f"several versions: {', '.join(sorted(set(versions)))}")
    cc_terms = found & {"BY", "SA", "NC", "ND"}
    if "ARR" in found:
        if found - {"ARR"} or version:
            return refuse("'all rights reserved' mixed with licence terms")
        return License(ALL_RIGHTS_RESERVED)
    if "ZERO" in found or "PD" in found:
        name = "CC0" if "ZERO" in found else PUBLIC_DOMAIN
        if cc_terms:
            return refuse(f"{name} mixed with {'/'.join(sorted(cc_terms))}")
        if name == "CC0" and "CC" not in found:
            return refuse("'zero' without a Creative Commons marker")
        if version not in (None, "1.0"):
            return refuse(f"{name} has no version {version}")
        return License(name, version)
    if not cc_terms:
        return refuse("no licence terms (BY, SA, NC, ND, CC0, public domain)")
    if "CC" not in found:
        return refuse("licence terms without a Creative Commons marker (cc, creativecommons.org)")
    if {"ND", "SA"} <= cc_terms:
        return refuse("no-derivatives with share-alike, which no licence combines")
    family = "CC-" + "-".join(t for t in ("BY", "NC", "ND", "SA") if t in cc_terms)
    return License(family, version, restrictions)


def normalize_license(raw: object) -> str:
    """The canonical family of a licence string: 'CC-BY-SA', 'CC0', 'CC-BY-NC', 'PD',
    'ALL-RIGHTS-RESERVED'; UNKNOWN for anything not classified unambiguously; ''
    when none is given. Versions and jurisdiction ports are dropped ('cc-by-sa-3.0-es'
    -> 'CC-BY-SA'); see parse_license for the version and the reason."""
    return parse_license(raw).family


def allowed_set(allow: Iterable[str] | None) -> set[str]:
    """The families an allow-list names (DEFAULT_ALLOWED when None), parsed like any
    licence string. Raises ValueError for an entry that is not a licence, so a typo in
    the config cannot silently allow (or match) junk."""
    if isinstance(allow, str):
        raise TypeError(f"the licence allow-list must be a list of licences, got the string {allow!r}")
    out = set()
    for entry in allow if allow is not None else DEFAULT_ALLOWED:
        lic = parse_license(entry)
        if lic.family in ("", UNKNOWN):
            raise ValueError(f"licence allow-list entry {entry!r} is not a licence: {lic.reason}")
        out.add(lic.family)
    return out


def is_allowed(raw: object, allow: Iterable[str] | None = None) -> bool:
    """Whether a licence string's parsed family is exactly one the allow-list names."""
    return parse_license(raw).family in allowed_set(allow)


def is_permissive(raw: object) -> bool:
    """Whether a licence string is one of the plan's permissive families (DEFAULT_ALLOWED)."""
    return is_allowed(raw, DEFAULT_ALLOWED)
