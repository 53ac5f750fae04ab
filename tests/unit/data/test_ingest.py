import json

import mongomock
import pytest

from shared.data.ingest import ingest, iter_jsonl_source, iter_mongo_source, map_fields, run_ingest
from shared.io.records import load_jsonl


def _rec(i, **kw):
    r = {
        "image_id": f"i{i}",
        "image_url": f"http://x/{i}.jpg",
        "taxon": "Rosa canina",
        "region": "EU_SW",
        "license": "CC-BY",
    }
    r.update(kw)
    return r


def _write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(r if isinstance(r, str) else json.dumps(r))
            f.write("\n")


def test_license_filter_malformed_and_duplicates(tmp_path):
    rows = [
        _rec(1),
        _rec(2, license="cc-by-nc-4.0"),
        _rec(3, license="CC0 1.0"),
        _rec(4, taxon=""),
        "{not json",
        _rec(5, width="wide"),
        [1, 2],
        _rec(6, image_url="http://x/1.jpg"),
        _rec(1, image_url="http://x/other.jpg"),
        _rec(7, license="All rights reserved"),
        _rec(8, region=None),
        _rec(9, width=50, height=300),
    ]
    p = tmp_path / "r.jsonl"
    _write(p, rows)
    res = ingest(iter_jsonl_source(p), min_side=100)
    assert [r.image_id for r in res.records] == ["i1", "i3"]
    by = {(r.reason, r.field, r.locator) for r in res.rejections}
    assert len(by) == len(res.rejections) == 10
    assert ("license_not_allowed", "license", "r.jsonl:2") in by
    assert ("license_not_allowed", "license", "r.jsonl:10") in by
    by = {(r.reason, r.field): r.locator for r in res.rejections}
    assert by[("missing_field", "taxon")] == "r.jsonl:4"
    assert by[("invalid_json", "<line>")] == "r.jsonl:5"
    assert by[("malformed_field", "width")] == "r.jsonl:6"
    assert by[("not_an_object", "<record>")] == "r.jsonl:7"
    assert by[("duplicate_image_url", "image_url")] == "r.jsonl:8"
    assert by[("duplicate_image_id", "image_id")] == "r.jsonl:9"
    assert by[("missing_field", "region")] == "r.jsonl:11"
    assert by[("too_small", "width")] == "r.jsonl:12"
    a = res.audit
    assert a["records_read"] == 12 and a["records_kept"] == 2
    assert a["dropped_by_reason"]["license_not_allowed"] == 2
    assert a["per_license_kept"] == {"CC-BY": 1, "CC0": 1}
    # valid = records that parsed (license counted before filtering): 1,2,3,6,1',7,9
    assert a["records_valid"] == 7
    assert a["permissive_share_of_valid"] == pytest.approx(5 / 7, abs=1e-4)


def test_field_map_and_mongo(tmp_path):
    coll = mongomock.MongoClient().db.photos
    coll.insert_many(
        [
            {"_id": 1, "url": "http://x/1.jpg", "species": {"name": "Quercus ilex"}, "zone": "EU_SW", "lic": "cc0"},
            {
                "_id": 2,
                "url": "http://x/2.jpg",
                "species": {"name": "Pinus nigra"},
                "zone": "EU_EAST",
                "lic": "cc-by-nc",
            },
            {"_id": 3, "url": "http://x/3.jpg", "zone": "EU_EAST", "lic": "cc-by"},
            {
                "_id": 4,
                "url": "http://x/4.jpg",
                "species": {"name": "Pinus nigra"},
                "zone": "OTHER",
                "lic": "cc-by",
                "hidden": True,
            },
        ]
    )
    fm = {"image_url": "url", "taxon": "species.name", "region": "zone", "license": "lic"}
    res = ingest(iter_mongo_source(coll, {"hidden": {"$ne": True}}, fm))
    assert [(r.image_id, r.taxon) for r in res.records] == [("1", "Quercus ilex")]
    reasons = sorted((r.locator, r.reason, r.field) for r in res.rejections)
    assert reasons == [("mongo:_id=2", "license_not_allowed", "license"), ("mongo:_id=3", "missing_field", "taxon")]
    with pytest.raises(ValueError, match="unknown record field"):
        map_fields({}, {"texon": "x"})


def test_run_ingest_writes_outputs(tmp_path, monkeypatch):
    p = tmp_path / "r.jsonl"
    _write(p, [_rec(1), _rec(2, license="CC-BY-NC")])
    out = {k: str(tmp_path / k) for k in ("records", "audit", "rej")}
    a = run_ingest("jsonl", str(p), None, ["CC0", "CC-BY"], 100, out["records"], out["audit"], out["rej"])
    assert a["records_kept"] == 1
    assert load_jsonl(out["records"])[0]["image_id"] == "i1"
    assert load_jsonl(out["rej"])[0]["reason"] == "license_not_allowed"
    with pytest.raises(FileNotFoundError, match="records file not found"):
        run_ingest("jsonl", str(tmp_path / "nope.jsonl"), None, None, 0, *out.values())
    monkeypatch.delenv("MONGO_URI", raising=False)
    with pytest.raises(RuntimeError, match="MONGO_URI"):
        run_ingest("mongo", "", {"database": "d", "collection": "c"}, None, 0, *out.values())


@pytest.mark.parametrize(
    "raw, canonical",
    [
        ("QUERCUS ILEX", "Quercus ilex"),
        ("quercus ilex subsp. BALLOTA", "Quercus ilex subsp. ballota"),
        ("Quercus ilex VAR. Rotundifolia", "Quercus ilex var. rotundifolia"),
        ("Mentha ×piperita", "Mentha \u00d7 piperita"),
        ("mentha X piperita", "Mentha \u00d7 piperita"),
        ("×cupressocyparis LEYLANDII", "\u00d7 Cupressocyparis leylandii"),
        ("x Cupressocyparis leylandii", "\u00d7 Cupressocyparis leylandii"),
        ("salix alba x salix fragilis", "Salix alba \u00d7 Salix fragilis"),
        ("Salix alba × FRAGILIS", "Salix alba \u00d7 fragilis"),
        ("Xanthium strumarium", "Xanthium strumarium"),
        ("prunus \u2018KANZAN\u2019", "Prunus 'Kanzan'"),
        ("Rosa 'gloire de dijon'", "Rosa 'Gloire De Dijon'"),
        ("Quercus (cerris) SUBER", "Quercus (Cerris) suber"),
        ("Quercus sp.", "Quercus sp."),
        ("ROSACEAE", "Rosaceae"),
        ("Iso\u0065\u0308tes\u00a0lacustris", "Iso\u00ebtes lacustris"),
        ("\u200bRosa\u2060 \u00a0canina\ufeff ", "Rosa canina"),
    ],
)
def test_taxon_normalisation_policy(raw, canonical):
    """The documented policy (shared/io/records.py), example by example."""
    from shared.io.records import normalize_taxon, parse_record

    assert normalize_taxon(raw) == canonical and normalize_taxon(canonical) == canonical
    rec = parse_record(_rec(1, taxon=raw))
    assert (rec.taxon, rec.to_dict().get("taxon_raw")) == (canonical, raw if raw != canonical else None)
