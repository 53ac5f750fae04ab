"""Catalogue data as it really comes, at ingest (issue 22): placeholder observation ids ("NA",
"0", "unknown") that joined records of every species into one split group; region spellings
("eu-sw", full-width, invisible characters) that became regions of their own and escaped the
regional teachers; a region nobody trains on; a 50 MB JSONL line read whole into memory."""

import json
import tracemalloc

import pytest

from shared.data.ingest import UnknownRegionError, ingest, iter_jsonl_source, run_ingest
from shared.data.split import stratified_split
from shared.io.records import load_jsonl


def _rec(i, taxon, **kw):
    r = {
        "image_id": f"i{i}",
        "image_url": f"http://img.example/{i}.jpg",
        "taxon": taxon,
        "region": "EU_SW",
        "license": "CC-BY",
        "observation_id": f"o{i}",
    }
    r.update(kw)
    return r


def _write(path, recs, extra_lines=()):
    with open(path, "wb") as f:
        for r in recs:
            f.write((json.dumps(r) + "\n").encode())
        for line in extra_lines:
            f.write(line)


def _outs(tmp_path):
    return [str(tmp_path / n) for n in ("records.jsonl", "audit.json", "rejections.jsonl")]


@pytest.mark.parametrize("placeholder", ["NA", "0", "unknown", " - ", "null", "N/A", "None"])
def test_a_placeholder_observation_id_does_not_join_every_species(tmp_path, placeholder):
    recs = [_rec(s * 10 + k, f"Genus species{s}", observation_id=placeholder) for s in range(6) for k in range(10)]
    res = ingest((f"r:{i}", r) for i, r in enumerate(recs))
    kept = [r.to_dict() for r in res.records]
    assert all("observation_id" not in r and r["observation_id_raw"] == placeholder.strip() for r in kept)
    split = stratified_split(kept, seed=1)
    assert all(split.stats["images"][s] > 0 for s in ("train", "val", "test"))  # before: one group, one split
    audit = res.audit["observation_ids_not_grouped"]["placeholder"]
    assert audit["ids"] == 1 and audit["records"] == 60 and audit["examples"][placeholder.strip()]["species"] == 6


def test_ids_shared_by_species_or_too_many_records_are_not_grouped():
    recs = [_rec(k, "Rosa canina", observation_id="big") for k in range(60)]
    recs += [_rec(100, "Rosa canina", observation_id="x1"), _rec(101, "Quercus ilex", observation_id="x1")]
    recs += [_rec(102, "Quercus ilex", observation_id="ok"), _rec(103, "Quercus ilex", observation_id="ok")]
    res = ingest((f"r:{i}", r) for i, r in enumerate(recs))
    a = res.audit["observation_ids_not_grouped"]
    assert a["too_many_records"]["examples"] == {"big": {"records": 60, "species": 1}}
    assert a["several_species"]["ids"] == 1 and a["several_species"]["records"] == 2
    assert [r.observation_id for r in res.records if r.image_id in ("i102", "i103")] == ["ok", "ok"]


REGION_SPELLINGS = ["EU_SW", "eu_sw", "EU-SW", "eu sw", "EU\u200b_SW", "\ufeffEU_SW", "\uff25\uff35\uff3f\uff33\uff37",
                    "EU\u00a0SW", "EU\u2013SW", " eu_sw\t"]  # fmt: skip


def test_region_spellings_become_one_region_with_the_raw_value_kept(tmp_path):
    recs = [_rec(i, "Rosa canina", region=r) for i, r in enumerate(REGION_SPELLINGS)]
    res = ingest((f"r:{i}", r) for i, r in enumerate(recs))
    assert {r.region for r in res.records} == {"EU_SW"}
    assert [r.extra.get("region_raw") for r in res.records] == [None, *(s.strip() for s in REGION_SPELLINGS[1:])]
    assert res.audit["per_region"] == {"EU_SW": len(REGION_SPELLINGS)}
    assert res.audit["records_region_normalised"] == len(REGION_SPELLINGS) - 1
    # and the regional split finds them all
    assert sum(stratified_split([r.to_dict() for r in res.records], regions="EU_SW").stats["images"].values()) == 10


def test_an_unknown_region_is_reported_and_with_fail_stops_the_run(tmp_path):
    p = tmp_path / "r.jsonl"
    _write(p, [_rec(1, "Rosa canina"), _rec(2, "Rosa canina", region="eu-atlantis"), _rec(3, "Rosa canina")])
    checks = {"known_regions": ["EU_SW", "EU_NORTH"]}
    a = run_ingest("jsonl", str(p), None, None, 0, *_outs(tmp_path), checks=checks)
    assert a["unknown_regions"] == {"EU_ATLANTIS": 1}
    with pytest.raises(UnknownRegionError, match="'EU_ATLANTIS' \\(1 records\\)"):
        run_ingest("jsonl", str(p), None, None, 0, *_outs(tmp_path), checks={**checks, "unknown_regions": "fail"})
    assert json.loads((tmp_path / "audit.json").read_text())["unknown_regions"] == {"EU_ATLANTIS": 1}


def test_a_50mb_line_is_rejected_by_line_and_offset_without_reading_it_whole(tmp_path):
    p = tmp_path / "r.jsonl"
    good = [_rec(1, "Rosa canina"), _rec(2, "Rosa canina")]
    huge = b'{"image_id": "x", "taxon": "' + b"a" * 50_000_000 + b'"}\n'
    _write(p, good[:1], [huge, (json.dumps(good[1]) + "\n").encode()])
    offset = len(json.dumps(good[0])) + 1
    tracemalloc.start()
    try:
        items = list(iter_jsonl_source(p, None, 1_000_000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8_000_000  # before: the 50 MB line was read (and decoded) whole
    res = ingest(items)
    assert [r.image_id for r in res.records] == ["i1", "i2"]
    (rej,) = res.rejections
    assert (rej.locator, rej.reason, rej.byte_offset) == ("r.jsonl:2", "line_too_long", offset)
    assert f"{len(huge) - 1} bytes" in rej.detail


def test_the_line_cap_applies_in_the_step(tmp_path):
    p = tmp_path / "r.jsonl"
    _write(p, [_rec(1, "Rosa canina"), _rec(2, "Rosa canina", source="s" * 5000), _rec(3, "Rosa canina")])
    run_ingest("jsonl", str(p), None, None, 0, *_outs(tmp_path), checks={"max_line_bytes": 1000})
    assert [r["image_id"] for r in load_jsonl(tmp_path / "records.jsonl")] == ["i1", "i3"]
    assert load_jsonl(tmp_path / "rejections.jsonl")[0]["locator"] == "r.jsonl:2"
