"""Hostile licence strings (issue 12): a non-commercial or no-derivatives term in any
position or spelling is never allowed, permissive licences in their many spellings
are, and text the parser cannot classify is refused. Fixed cases for each reported
spelling, plus hypothesis tests that generate spellings.

When PLANTID_FUZZ_COUNTS names a file, the number of inputs each test tried is added
to it (as in test_fuzz_inputs.py)."""

import unicodedata
from collections import Counter
from itertools import pairwise

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from shared.data.ingest import ingest
from shared.data.licenses import (
    DEFAULT_ALLOWED,
    UNKNOWN,
    is_allowed,
    is_permissive,
    parse_license,
)
from tests.reliability.fuzzing import fuzz_settings, write_counts  # noqa: E402

TRIED: Counter = Counter()
# same policy as test_fuzz_inputs: fixed examples in CI, PLANTID_FUZZ_EXAMPLES=5000 explores further
FUZZ = fuzz_settings(200)


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    write_counts(TRIED)


# --- fixed cases -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,family,terms",
    [
        ("CC BY 4.0 NC", "CC-BY-NC", {"NC"}),
        ("https://creativecommons.org/licenses/by/4.0/ (non-commercial use only)", "CC-BY-NC", {"NC"}),
        ("cc-by-4.0-nc", "CC-BY-NC", {"NC"}),
        ("CC BY 4.0 / NoDerivatives", "CC-BY-ND", {"ND"}),
        ("https://creativecommons.org/licenses/by-nc/4.0/", "CC-BY-NC", {"NC"}),
        ("https://creativecommons.org/licenses/by/4.0/?nc", "CC-BY-NC", {"NC"}),
        ("Cc By-Nc 4.0", "CC-BY-NC", {"NC"}),  # mixed case
        ("CC_BY_NC_4.0", "CC-BY-NC", {"NC"}),  # underscores
        ("  CC    BY     NC   4.0 ", "CC-BY-NC", {"NC"}),  # extra spaces
        ("CC\u2010BY\u2013NC\u20144.0", "CC-BY-NC", {"NC"}),  # hyphen, en and em dash
        ("CC BY\u2212ND 4.0", "CC-BY-ND", {"ND"}),  # minus sign
        ("\uff23\uff23 \uff22\uff39-\uff2e\uff23", "CC-BY-NC", {"NC"}),  # fullwidth
        ("CC BY N\u200bC", "CC-BY-NC", {"NC"}),  # zero-width space inside NC
        ("CC BY\u00adNC 4.0", "CC-BY-NC", {"NC"}),  # soft hyphen glues BY and NC
        ("ccbyncsa4.0", "CC-BY-NC-SA", {"NC"}),  # glued
        ("CC BY 4.0 NoDerivs", "CC-BY-ND", {"ND"}),
        ("cc by 4.0 no derivative works", "CC-BY-ND", {"ND"}),
        ("Creative Commons Attribution-NonCommercial-ShareAlike 4.0 International", "CC-BY-NC-SA", {"NC"}),
        ("CC BY 4.0, non commercial", "CC-BY-NC", {"NC"}),
        ("CC BY 4.0 no comercial", "CC-BY-NC", {"NC"}),
        ("CC BY 4.0 sin obra derivada", "CC-BY-ND", {"ND"}),
        ("Creative Commons Reconocimiento-NoComercial-SinObraDerivada 4.0 Internacional", "CC-BY-NC-ND", {"NC", "ND"}),
        ("cc-by-nc-nd", "CC-BY-NC-ND", {"NC", "ND"}),
        ("CC_BY_NC_4_0", "CC-BY-NC", {"NC"}),  # GBIF's enumeration
        ("Creative Commons Atribuci\u00f3n-NoComercial 4.0 Internacional", "CC-BY-NC", {"NC"}),  # accents
        ("CC BY 4.0 \u00f1c", "CC-BY-NC", {"NC"}),  # an accent on the term itself
    ],
)
def test_nc_nd_anywhere_parses_to_the_restricted_family(raw, family, terms):
    lic = parse_license(raw)
    assert (lic.family, lic.restrictions) == (family, frozenset(terms))
    assert not is_permissive(raw)
    assert is_allowed(raw, [family])  # allowed only when the allow-list names that exact family
    assert not is_allowed(raw, list(DEFAULT_ALLOWED) + ["PD", "All rights reserved"])


@pytest.mark.parametrize(
    "raw,terms,why",
    [
        ("Attribution-NonCommercial", {"NC"}, "without a Creative Commons marker"),
        ("by-nc", {"NC"}, "without a Creative Commons marker"),
        ("Reconocimiento-NoComercial-SinObraDerivada 4.0", {"NC", "ND"}, "without a Creative Commons marker"),
        ("CC BY 4.0 non-commerical", {"NC"}, "unrecognised words 'non', 'commerical'"),  # typo
        ("CC BY 4.0 noncommercially", {"NC"}, "unrecognised word 'noncommercially'"),
        ("CC BY 4.0 (NC-ish)", {"NC"}, "unrecognised word 'ish'"),
        ("CC0 NC", {"NC"}, "CC0 mixed with NC"),
        ("public domain, no derivatives", {"ND"}, "PD mixed with ND"),
        ("CC BY-ND-SA 4.0", {"ND"}, "no-derivatives with share-alike"),
        ("All rights reserved, CC BY", set(), "'all rights reserved' mixed"),
        ("\u0421\u0421 BY 4.0", set(), "unrecognised word"),  # Cyrillic homoglyphs for CC
        ("CC BY 4.0 no", set(), "unrecognised word 'no'"),  # a dangling negation
        ("CC BY 4.0 except commercial use", set(), "unrecognised word"),
        ("CC BY 5.0", set(), "not a version Creative Commons published"),
        ("CC BY 3.0 / CC BY 4.0", set(), "several versions"),
        ("https://evil.example/creativecommons.org/licenses/by/4.0/", set(), "unrecognised word"),
        ("BY 4.0", set(), "without a Creative Commons marker"),
        ("CC 4.0", set(), "no licence terms"),
        ("zero", set(), "without a Creative Commons marker"),
    ],
)
def test_what_cannot_be_classified_is_refused_with_a_reason(raw, terms, why):
    lic = parse_license(raw)
    assert lic.family == UNKNOWN and why in lic.reason
    assert lic.restrictions == frozenset(terms)
    for term in terms:
        assert {"NC": "non-commercial", "ND": "no-derivatives"}[term] in lic.reason
    assert not is_allowed(raw, ["CC0", "CC-BY", "CC-BY-SA", "CC-BY-NC", "CC-BY-ND", "CC-BY-NC-ND", "PD"])


def test_ingest_keeps_only_the_permissive_spellings():
    hostile = [
        "CC BY 4.0 NC",
        "https://creativecommons.org/licenses/by/4.0/ (non-commercial use only)",
        "cc-by-4.0-nc",
        "CC BY 4.0 / NoDerivatives",
        "Attribution-NonCommercial",
        "CC\u2013BY\u2013NC",
        "\u0421\u0421 BY 4.0",
        "CC0 NC",
    ]
    good = ["CC BY 4.0", "https://creativecommons.org/licenses/by-sa/4.0/", "cc0-1.0"]
    src = [
        (
            f"t:{i}",
            {
                "image_id": f"i{i}",
                "image_url": f"http://x/{i}.jpg",
                "taxon": "Rosa canina",
                "region": "EU_SW",
                "license": lic,
            },
        )
        for i, lic in enumerate(hostile + good)
    ]
    res = ingest(src)
    assert [r.license for r in res.records] == good
    assert [r.extra["license_family"] for r in res.records] == ["CC-BY", "CC-BY-SA", "CC0"]
    assert [(r.reason, r.field) for r in res.rejections] == [("license_not_allowed", "license")] * len(hostile)


# --- generated spellings -----------------------------------------------------------------

SEPARATORS = [" ", "-", "_", "  ", "/", " - ", ".", "\u2010", "\u2013", "\u2014", "\u2212", "\u00a0", "\t"]
NC_TERMS = [
    "nc",
    "non-commercial",
    "noncommercial",
    "NonCommercial",
    "non commercial",
    "non_commercial",
    "non\u2013commercial",
    "no commercial",
    "no comercial",
    "nocomercial",
    "(non-commercial use only)",
    "non-commercial use only",
    "N\u200bC",
    "\uff2e\uff23",
]
ND_TERMS = [
    "nd",
    "NoDerivatives",
    "no-derivatives",
    "NoDerivs",
    "no derivs",
    "no derivative works",
    "no_derivatives",
    "sin obra derivada",
    "SinObraDerivada",
    "N\u00adD",
]
# Cyrillic and Greek letters that look like Latin ones
HOMOGLYPHS = {
    "c": "\u0441",
    "a": "\u0430",
    "e": "\u0435",
    "o": "\u043e",
    "p": "\u0440",
    "y": "\u0443",
    "b": "\u044c",
    "i": "\u0456",
    "s": "\u0455",
    "n": "\u03b7",
}


@st.composite
def recased(draw, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if f else c.lower() for c, f in zip(text, flips, strict=True))


def _join(draw, parts: list[str]) -> str:
    """Join with a random separator per gap, or none where the words still split apart
    ("ccbysa", "by4.0"; not "01.0", where two numbers would merge)."""
    out = parts[0]
    for prev, nxt in pairwise(parts):
        digits = prev[-1].isdigit() and nxt[0].isdigit()
        seps = [s for s in SEPARATORS if not (digits and s == ".")]
        if not digits and not nxt.startswith("v"):
            seps.append("")
        out += draw(st.sampled_from(seps)) + nxt
    return out


@st.composite
def permissive(draw) -> tuple[str, str]:
    """A permissive licence in one of its spellings, and its family."""
    family = draw(st.sampled_from(["CC-BY", "CC-BY-SA", "CC0"]))
    form = draw(st.sampled_from(["code", "url", "long", "gbif"]))
    if family == "CC0":
        version = draw(st.sampled_from(["", "1.0", "1", "v1.0"]))
    else:
        version = draw(st.sampled_from(["", "4.0", "4", "v4.0", "3.0", "2.5", "2.0", "2.1", "1.0"]))
    if form == "url":
        path = {"CC-BY": "licenses/by", "CC-BY-SA": "licenses/by-sa", "CC0": "publicdomain/zero"}[family]
        v = version.lstrip("v") or ("1.0" if family == "CC0" else "4.0")
        v = v if "." in v else v + ".0"
        port = draw(st.sampled_from(["", "es/", "fr/"])) if v in ("2.0", "2.5", "3.0") else ""
        tail = draw(st.sampled_from(["", "legalcode", "deed.en", "deed.pt_BR", "?ref=chooser-v1"]))
        url = (
            draw(st.sampled_from(["https://", "http://", ""]))
            + draw(st.sampled_from(["", "www."]))
            + f"creativecommons.org/{path}/{v}/{port}{tail}"
        )
        text = draw(recased(url))
    elif form == "long":
        if family == "CC0":
            text = draw(
                st.sampled_from(
                    ["CC0 1.0 Universal", "CC0 1.0 Universal Public Domain Dedication", "Creative Commons Zero"]
                )
            )
        else:
            name = {"CC-BY": "Attribution", "CC-BY-SA": "Attribution-ShareAlike"}[family]
            text = " ".join(
                x
                for x in [
                    "Creative Commons",
                    name,
                    version,
                    draw(st.sampled_from(["", "International", "Unported", "Generic"])),
                    draw(st.sampled_from(["", "License", "licence", "Public License"])),
                ]
                if x
            )
        text = draw(recased(text))
    elif form == "gbif":
        text = draw(recased({"CC-BY": "CC_BY_4_0", "CC-BY-SA": "CC_BY_SA_4_0", "CC0": "CC0_1_0"}[family]))
    else:
        prefix = draw(st.sampled_from(["cc", "creative commons", "creativecommons"]))
        terms = {"CC-BY": ["by"], "CC-BY-SA": ["by", "sa"], "CC0": [draw(st.sampled_from(["0", "zero"]))]}[family]
        parts = prefix.split() + terms + ([version] if version else [])
        if version in ("2.0", "2.5", "3.0") and draw(st.booleans()):
            parts.append(draw(st.sampled_from(["es", "fr", "de"])))
        text = draw(recased(_join(draw, parts)))
    pad = draw(st.sampled_from([("", ""), (" ", " "), ("(", ")"), ("<", ">"), ('"', '"')]))
    return pad[0] + text + pad[1], family


@st.composite
def restricted(draw) -> tuple[str, str, bool]:
    """A permissive spelling with an NC or ND term inserted at any character position,
    with or without separators; also whether the term stands apart as its own words."""
    base, _ = draw(permissive())
    kind = draw(st.sampled_from(["NC", "ND"]))
    term = draw(recased(draw(st.sampled_from(NC_TERMS if kind == "NC" else ND_TERMS))))
    at = draw(st.integers(0, len(base)))
    left, right = draw(st.sampled_from(SEPARATORS + [""])), draw(st.sampled_from(SEPARATORS + [""]))
    return base[:at] + left + term + right + base[at:], kind, bool(left and right)


@FUZZ
@given(case=permissive())
def test_generated_permissive_spellings_are_allowed(case):
    text, family = case
    TRIED["license_permissive"] += 1
    lic = parse_license(text)
    assert (lic.family, lic.restrictions) == (family, frozenset()), (text, lic)
    assert is_permissive(text)
    # exact family: the same spelling fails an allow-list that names only the other families
    assert not is_allowed(text, [f for f in DEFAULT_ALLOWED if f != family])


@FUZZ
@given(case=restricted())
def test_generated_nc_nd_insertions_are_never_allowed(case):
    text, kind, apart = case
    TRIED["license_nc_nd_inserted"] += 1
    lic = parse_license(text)
    assert not is_permissive(text), (text, lic)
    assert not is_allowed(text, list(DEFAULT_ALLOWED) + ["PD", "All rights reserved"]), (text, lic)
    if apart:  # a term set off by separators is always seen, even inside an unknown word
        assert kind in lic.restrictions, (text, lic)


@FUZZ
@given(data=st.data())
def test_generated_foreign_words_and_homoglyphs_are_refused(data):
    base, _ = data.draw(permissive())
    TRIED["license_foreign_word"] += 1
    if data.draw(st.booleans()):
        # a word outside the licence vocabulary (none is spelled with these letters)
        word = data.draw(st.text("qxzjkQXZJK", min_size=2, max_size=8))
        at = data.draw(st.integers(0, len(base)))
        before, after = data.draw(st.sampled_from(SEPARATORS)), data.draw(st.sampled_from(SEPARATORS))
        text = base[:at] + before + word + after + base[at:]
    else:
        spots = [i for i, c in enumerate(base) if c.lower() in HOMOGLYPHS]
        i = data.draw(st.sampled_from(spots))
        text = base[:i] + HOMOGLYPHS[base[i].lower()] + base[i + 1 :]
    lic = parse_license(text)
    assert lic.family == UNKNOWN and not is_permissive(text), (text, lic)


def _squashed(text: str) -> str:
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text)).casefold()
    return "".join(c for c in folded if c.isalnum())


# licence words and junk, but never a Creative Commons marker ("cc", "creative commons")
NO_MARKER_PIECES = st.sampled_from(
    [
        "by",
        "sa",
        "BY-SA",
        "4.0",
        "v3",
        "attribution",
        "ShareAlike",
        "zero",
        "0",
        "International",
        "licenses",
        "https://",
        "org",
        "es",
        "deed",
    ]
) | st.text(max_size=6)


@FUZZ
@given(text=st.text(max_size=80) | st.lists(NO_MARKER_PIECES, max_size=6).map(" ".join))
def test_random_text_without_a_cc_marker_is_never_allowed(text):
    # hypothesis also feeds in string constants from the code under test ("CC0", "cc"),
    # which do spell licences; those are the permissive tests' business
    assume("cc" not in _squashed(text) and "creativecommons" not in _squashed(text))
    TRIED["license_random_text"] += 1
    lic = parse_license(text)
    assert not is_permissive(text), (text, lic)
    assert lic.family in (UNKNOWN, "", "PD", "ALL-RIGHTS-RESERVED"), (text, lic)
