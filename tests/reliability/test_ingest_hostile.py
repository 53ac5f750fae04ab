"""Hostile catalogue data at ingest (issue 12): species names that differ only by
Unicode normalisation, case, spaces or invisible characters (each became a class of its
own); records files that are not UTF-8 (bad bytes were replaced and kept as yet another
class) or open with a BOM (the first record was lost); and runs where every record is
rejected (ingest succeeded, split failed later with a message about regions).

When PLANTID_FUZZ_COUNTS names a file, the number of names the property test tried is
added to it (`make bench` reports them)."""

import json
import os
import unicodedata
from collections import Counter
from pathlib import Path

import mongomock
import pytest
from hypothesis import given
from hypothesis import strategies as st

import shared.data.ingest as ingest_mod
from shared.data.ingest import IngestError, NothingKeptError, ingest, iter_jsonl_source, iter_mongo_source, run_ingest
from shared.io.records import load_jsonl, normalize_taxon, parse_record
from tests.reliability.fuzzing import fuzz_settings, write_counts  # noqa: E402

TRIED: Counter = Counter()
# derandomize: CI sees the same examples every run; PLANTID_FUZZ_EXAMPLES=5000 fuzzes deeper with fresh draws
FUZZ = fuzz_settings()
ZERO_WIDTH = ("\u200b", "\u200c", "\u200d", "\ufeff", "\u2060")
SPACES = (" ", "  ", "\u00a0", "\t", "\u2003", "\u202f", "\u3000", " \u00a0 ")


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    write_counts(TRIED, "hostile_")


def _rec(i, taxon="Rosa canina", **kw):
    r = {
        "image_id": f"i{i}",
        "image_url": f"http://img.example/{i}.jpg",
        "taxon": taxon,
        "region": "EU_SW",
        "license": "CC-BY",
    }
    r.update(kw)
    return r


def _line(rec) -> bytes:
    return (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")


def _outs(tmp_path):
    return [str(tmp_path / n) for n in ("records.jsonl", "audit.json", "rejections.jsonl")]


# --- 1. one species, one class -----------------------------------------------------------

ISOETES = "Iso\u00ebtes lacustris"  # NFC: e with diaeresis as one code point
VARIANTS = {
    "Quercus ilex": [
        "Quercus ilex",
        "quercus ilex",
        "QUERCUS ILEX",
        "Quercus  ilex",
        " Quercus ilex\t",
        "Quercus\u00a0ilex",
        "Quer\u200bcus ilex",
        "Quercus\u200c ilex",
        "\ufeffQuercus ilex",
        "Quercus il\u200dex",
        "Quercus ilex\u2060",
        "quercus\u3000ILEX\u00a0",
    ],
    "Cistus ladanifer": ["Cistus ladanifer", "cistus LADANIFER", "Cistus\u2060 ladanifer"],
    ISOETES: [
        ISOETES,
        unicodedata.normalize("NFD", ISOETES),
        "ISO\u00cbTES LACUSTRIS",
        unicodedata.normalize("NFD", "iso\u00ebtes\u00a0lacustris\u200b"),
    ],
}


def test_name_variants_collapse_to_one_class_with_the_raw_name_kept(tmp_path):
    rows, n = [], 0
    for variants in VARIANTS.values():
        for v in variants:
            rows.append(_rec(n, v))
            n += 1
    src = tmp_path / "records.jsonl"
    src.write_bytes(b"".join(_line(r) for r in rows))
    out = _outs(tmp_path / "out")
    audit = run_ingest("jsonl", str(src), None, None, 0, *out)
    kept = load_jsonl(out[0])
    assert len(kept) == n and audit["classes"] == len(VARIANTS)
    assert {r["taxon"] for r in kept} == set(VARIANTS)
    raw_by_id = {r["image_id"]: r["taxon"] for r in rows}
    for r in kept:  # nothing lost: the catalogue's spelling is beside the canonical one when they differ
        raw = raw_by_id[r["image_id"]]
        assert r.get("taxon_raw") == (raw if raw != r["taxon"] else None), r
    assert audit["records_taxon_normalised"] == sum(raw_by_id[r["image_id"]] != r["taxon"] for r in kept)
    assert audit["records_taxon_normalised"] == n - len(VARIANTS)


def test_mongo_source_normalises_names_too(tmp_path, monkeypatch):
    coll = mongomock.MongoClient().db.photos
    names = [
        "QUERCUS ILEX",
        "Quercus\u00a0ilex",
        "quercus ilex\u200b",
        "Quercus ilex",
        unicodedata.normalize("NFD", ISOETES),
        ISOETES.upper(),
    ]
    coll.insert_many(
        [
            {"_id": i, "url": f"http://img.example/{i}.jpg", "species": {"name": s}, "zone": "EU_SW", "lic": "cc0"}
            for i, s in enumerate(names)
        ]
    )
    fm = {"image_url": "url", "taxon": "species.name", "region": "zone", "license": "lic"}
    res = ingest(iter_mongo_source(coll, {}, fm))
    assert [r.taxon for r in res.records] == ["Quercus ilex"] * 4 + [ISOETES] * 2
    assert [r.taxon_raw for r in res.records] == [None if s == "Quercus ilex" else s for s in names]
    # and through the step, as the component runs it
    monkeypatch.setattr(ingest_mod, "mongo_collection", lambda uri_env, db, c: coll)
    out = _outs(tmp_path)
    audit = run_ingest("mongo", "", {"database": "db", "collection": "photos", "field_map": fm}, None, 0, *out)
    assert audit["classes"] == 2
    assert load_jsonl(out[0])[0] == {
        "image_id": "0",
        "image_url": "http://img.example/0.jpg",
        "taxon": "Quercus ilex",
        "taxon_raw": "QUERCUS ILEX",
        "region": "EU_SW",
        "license": "cc0",
        "license_family": "CC0",
    }


# A canonical name: genus (or a nothogenus after "×"), epithet, maybe "×" before it, maybe
# a rank with an infraspecific epithet, maybe a cultivar in quotes.
LATIN = "abcdefghijklmnopqrstuvwyz\u00eb\u00ef\u00e9\u00e8"  # no "x": a lone x is a hybrid mark
word = st.text(LATIN, min_size=2, max_size=9)


@st.composite
def canonical_name(draw):
    genus = draw(word).capitalize()
    parts = ["\u00d7", genus] if draw(st.integers(0, 4)) == 0 else [genus]
    if draw(st.integers(0, 5)):  # most names have an epithet
        if len(parts) == 1 and draw(st.integers(0, 4)) == 0:
            parts.append("\u00d7")
        parts.append(draw(word))
        if draw(st.integers(0, 3)) == 0:
            parts += [draw(st.sampled_from(["subsp.", "var.", "f."])), draw(word)]
    if draw(st.integers(0, 5)) == 0:
        parts.append("'" + " ".join(w.capitalize() for w in draw(st.lists(word, min_size=1, max_size=2))) + "'")
    return " ".join(parts)


def _disguise(data, name: str) -> str:
    """The same name as a careless or hostile catalogue might write it: case flipped
    letter by letter, "×" as x or X or glued to the next word, spaces widened or turned
    into NBSP, tabs, em or ideographic spaces, NFD, zero-width characters anywhere."""
    flips = data.draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    words = "".join(c.swapcase() if f else c for c, f in zip(name, flips, strict=True)).split(" ")
    s = ""
    for i, w in enumerate(words):
        glued = False
        if w == "\u00d7":
            w = data.draw(st.sampled_from(["\u00d7", "x", "X", "\u00d7glued"]))
            glued, w = w.endswith("glued"), w.removesuffix("glued")
        s += w + ("" if glued or i == len(words) - 1 else data.draw(st.sampled_from(SPACES)))
    s = data.draw(st.sampled_from(["", " ", "\u00a0", "\t"])) + s + data.draw(st.sampled_from(["", " ", "\u3000"]))
    if data.draw(st.booleans()):
        s = unicodedata.normalize("NFD", s)
    for _ in range(data.draw(st.integers(0, 4))):
        at = data.draw(st.integers(0, len(s)))
        s = s[:at] + data.draw(st.sampled_from(ZERO_WIDTH)) + s[at:]
    return s


@FUZZ
@given(name=canonical_name(), data=st.data())
def test_disguised_names_normalise_to_the_same_form(name, data):
    TRIED["taxon_names"] += 1
    assert normalize_taxon(name) == name  # a well-formed name is left exactly as it is
    disguised = _disguise(data, name)
    assert normalize_taxon(disguised) == name, (disguised, name)
    rec = parse_record(_rec(0, disguised))
    assert rec.taxon == name and rec.taxon_raw == (disguised if disguised != name else None)


@pytest.mark.parametrize("raw", ["\u200b\u200d\ufeff", "\u00a0\u3000\u2060"], ids=["zero_width", "spaces"])
def test_a_name_of_invisible_characters_is_missing(raw):
    res = ingest([("t:1", _rec(1, raw)), ("t:2", _rec(2))])
    assert [(r.locator, r.reason, r.field) for r in res.rejections] == [("t:1", "missing_field", "taxon")]


# --- 2. bytes that are not UTF-8 ------------------------------------------------------------


def test_a_latin1_line_is_rejected_by_line_and_byte_offset_and_the_others_kept(tmp_path):
    lines = [
        _line(_rec(1, "Crepis biennis")),
        (json.dumps(_rec(2, "Cr\u00e9pis foetida"), ensure_ascii=False) + "\n").encode("latin-1"),
        _line(_rec(3, ISOETES)),  # real UTF-8 accents are fine
        _line(_rec(4, "Crepis foetida")),
    ]
    data = b"".join(lines)
    src = tmp_path / "records.jsonl"
    src.write_bytes(data)
    res = ingest(iter_jsonl_source(src))
    assert [r.image_id for r in res.records] == ["i1", "i3", "i4"]
    assert not any("\ufffd" in r.taxon for r in res.records)  # no replacement character became a class
    (rej,) = res.rejections
    offset = data.index(b"\xe9")
    assert (rej.locator, rej.reason, rej.field, rej.byte_offset) == ("records.jsonl:2", "not_utf8", "<line>", offset)
    assert f"byte offset {offset}" in rej.detail and "line 2" in rej.detail
    out = _outs(tmp_path / "out")
    run_ingest("jsonl", str(src), None, None, 0, *out)
    assert load_jsonl(out[2]) == [rej.to_dict()] and load_jsonl(out[2])[0]["byte_offset"] == offset


@pytest.mark.parametrize(
    "bad",
    [
        b"\xed\xa0\x80",  # a surrogate encoded as UTF-8 (CESU-8)
        b"\xc0\xaf",  # an overlong "/"
        b"\x80",  # a lone continuation byte
        b"\xe2\x82",  # a sequence cut short
        b"\xff",
    ],
    ids=["surrogate", "overlong", "continuation", "truncated", "ff"],
)
def test_every_kind_of_bad_utf8_names_its_first_byte(tmp_path, bad):
    good = _line(_rec(1))
    line = (
        b'{"image_id": "i2", "image_url": "http://img.example/2.jpg", "taxon": "Rosa '
        + bad
        + b'", "region": "EU_SW", "license": "CC0"}\n'
    )
    src = tmp_path / "r.jsonl"
    src.write_bytes(good + line + _line(_rec(3)))
    res = ingest(iter_jsonl_source(src))
    assert [r.image_id for r in res.records] == ["i1", "i3"]
    offset = len(good) + line.index(bad)
    assert [(r.locator, r.reason, r.byte_offset) for r in res.rejections] == [("r.jsonl:2", "not_utf8", offset)]


def test_a_bom_file_keeps_its_first_record(tmp_path):
    bom = b"\xef\xbb\xbf"
    latin1 = (json.dumps(_rec(3, "Cr\u00e9pis foetida"), ensure_ascii=False) + "\r\n").encode("latin-1")
    data = bom + _line(_rec(1)).replace(b"\n", b"\r\n") + _line(_rec(2, "Quercus ilex")) + latin1
    src = tmp_path / "records.jsonl"
    src.write_bytes(data)
    res = ingest(iter_jsonl_source(src))
    assert [(r.image_id, r.taxon) for r in res.records] == [("i1", "Rosa canina"), ("i2", "Quercus ilex")]
    # offsets count the BOM: they are positions in the file as it is
    assert [(r.locator, r.byte_offset) for r in res.rejections] == [("records.jsonl:3", data.index(b"\xe9"))]


def test_a_bom_inside_the_file_is_not_silently_eaten(tmp_path):
    """Only the file's first bytes may be a BOM; one opening a later line (two files
    concatenated) makes that line invalid JSON, rejected by line like any other."""
    src = tmp_path / "records.jsonl"
    src.write_bytes(_line(_rec(1)) + b"\xef\xbb\xbf" + _line(_rec(2)))
    res = ingest(iter_jsonl_source(src))
    assert [r.image_id for r in res.records] == ["i1"]
    assert [(r.locator, r.reason) for r in res.rejections] == [("records.jsonl:2", "invalid_json")]


# --- 3. nothing kept -------------------------------------------------------------------------


def _latin1_file(p: Path) -> None:
    p.write_bytes(
        b"".join(
            (json.dumps(_rec(i, "Cr\u00e9pis " + e), ensure_ascii=False) + "\n").encode("latin-1")
            for i, e in enumerate(["biennis", "foetida", "capillaris"])
        )
    )


def _filtered_file(p: Path) -> None:
    p.write_bytes(b"".join(_line(_rec(i, width=50, height=60)) for i in range(4)))


def _mixed_file(p: Path) -> None:
    rows = (
        [_line(_rec(i, license="CC-BY-NC")) for i in range(5)]
        + [b"{not json\n"] * 4
        + [_line(_rec(10 + i, taxon="")) for i in range(3)]
        + [b'{"taxon": "Cr\xe9pis"}\n'] * 2
        + [_line(_rec(20, width=10, height=10))]
    )
    p.write_bytes(b"".join(rows))


@pytest.mark.parametrize(
    "make, allow, min_side, expect",
    [
        (
            _latin1_file,
            None,
            0,
            ["all 3 records read were rejected", "not_utf8=3", "another encoding", "records.jsonl:1 field '<line>'"],
        ),
        (_filtered_file, None, 100, ["all 4 records", "too_small=4", "data.min_side"]),
        (
            _mixed_file,
            ["CC0", "CC-BY"],
            100,
            [
                "all 15 records",
                "top reasons: license_not_allowed=5",
                "; invalid_json=4",
                "; missing_field=3",
                "2 other reason(s)",
                "data.license_allow",
            ],
        ),
        (lambda p: p.write_bytes(b"\n\n"), None, 0, ["the source is empty (0 records read"]),
    ],
    ids=["latin1_file", "all_filtered", "mixed_top3", "empty_file"],
)
def test_a_run_that_keeps_nothing_fails_naming_the_dominant_reasons(tmp_path, make, allow, min_side, expect):
    src = tmp_path / "records.jsonl"
    make(src)
    out = _outs(tmp_path / "out")
    with pytest.raises(NothingKeptError) as e:
        run_ingest("jsonl", str(src), None, allow, min_side, *out)
    msg = str(e.value)
    for fragment in expect:
        assert fragment in msg, (fragment, msg)
    assert isinstance(e.value, IngestError) and isinstance(e.value, ValueError)
    # the account is still written, so the user can see every line's reason; no records file to consume
    assert not os.path.exists(out[0])
    audit = json.loads(Path(out[1]).read_text())
    assert audit["records_kept"] == 0 and len(load_jsonl(out[2])) == audit["records_read"]


def test_a_mongo_query_that_keeps_nothing_names_its_documents(tmp_path):
    coll = mongomock.MongoClient().db.photos
    coll.insert_many(
        [
            {
                "_id": i,
                "image_url": f"http://img.example/{i}.jpg",
                "taxon": "Rosa canina",
                "region": "EU_SW",
                "license": "All rights reserved",
            }
            for i in range(3)
        ]
    )
    with pytest.raises(NothingKeptError, match=r"all 3 records .*license_not_allowed=3 \(e\.g\. mongo:_id=0"):
        ingest(iter_mongo_source(coll))
