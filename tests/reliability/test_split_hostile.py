"""Catalogue data as it really comes, at the split (issue 22): one photo served re-encoded or
resized under several records (different bytes, so sha256 did not group them) landed in train
and in val/test; the same photo under two species was no label conflict. The perceptual hash
(`phash`) groups them, found by multi-index hashing, not all pairs."""

import random

import numpy as np

from shared.data.near_duplicates import near_duplicate_groups
from shared.data.perceptual_hash import NEAR_DUPLICATE_BITS, hamming, to_hex
from shared.data.split import check_leakage, stratified_split

RNG_SEED = 7


def _flip(value: int, bits: int, rng: random.Random) -> int:
    for b in rng.sample(range(64), bits):
        value ^= 1 << b
    return value


def _records(n: int, taxon: str, start: int, rng: random.Random) -> list[dict]:
    return [
        {
            "image_id": f"i{start + k:05d}",
            "taxon": taxon,
            "region": "EU_SW",
            "sha256": f"{start + k:064x}",
            "observation_id": f"o{start + k}",
            "phash": to_hex(rng.getrandbits(64)),
        }
        for k in range(n)
    ]


def _where(result) -> dict[str, str]:
    return {r["image_id"]: name for name, rows in result.by_name().items() for r in rows}


def test_renditions_of_one_photo_stay_in_one_split():
    rng = random.Random(RNG_SEED)
    recs = _records(40, "Quercus ilex", 0, rng)
    photo = rng.getrandbits(64)
    for k in range(8):  # eight renditions: other bytes, other observations, hashes <= 10 bits apart
        recs[k * 5]["phash"] = to_hex(_flip(photo, k % (NEAR_DUPLICATE_BITS // 2 + 1), rng))
    r = stratified_split(recs, seed=3)
    where = _where(r)
    assert len({where[recs[k * 5]["image_id"]] for k in range(8)}) == 1
    nd = r.stats["near_duplicates"]
    assert nd["groups"] == 1 and nd["records_in_groups"] == 8 and len(nd["examples"][0]) == 5
    assert r.stats["leakage"]["leak_free"]


def test_one_photo_under_two_species_is_a_label_conflict():
    rng = random.Random(RNG_SEED)
    recs = _records(20, "Quercus ilex", 0, rng) + _records(20, "Quercus suber", 100, rng)
    recs[25]["phash"] = to_hex(_flip(int(recs[3]["phash"], 16), 4, rng))
    r = stratified_split(recs, seed=1)
    where = _where(r)
    assert "i00003" not in where and "i00105" not in where  # neither name is trained or scored on
    lc = r.stats["label_conflicts"]
    assert lc["groups"] == 1 and lc["records"] == 2
    assert {x["taxon"] for x in lc["examples"][0]} == {"Quercus ilex", "Quercus suber"}
    assert sum(r.stats["images"].values()) == 38


def test_the_leakage_check_finds_near_duplicates_across_splits():
    a = 0x0123456789ABCDEF
    splits = {
        "train": [{"image_id": "1", "taxon": "x", "phash": to_hex(a)}],
        "val": [{"image_id": "2", "taxon": "x", "phash": to_hex(a ^ 0b1011)}],
        "test": [{"image_id": "3", "taxon": "x", "phash": to_hex(a ^ 0xFFFF_FFFF)}],  # 32 bits: another photo
    }
    res = check_leakage(splits)
    assert not res["leak_free"]
    assert res["conflicts"] == [
        f"near-duplicate images 1 (train, phash {to_hex(a)}) and 2 (val, phash {to_hex(a ^ 0b1011)})"
    ]


def test_records_without_a_phash_are_grouped_as_before_and_a_bad_one_is_counted():
    rng = random.Random(RNG_SEED)
    recs = _records(30, "Rosa canina", 0, rng)
    for r in recs[:10]:
        del r["phash"]
    recs[10]["phash"] = "not-hex"
    recs[1]["sha256"] = recs[2]["sha256"]
    r = stratified_split(recs, seed=2)
    where = _where(r)
    assert where["i00001"] == where["i00002"]
    nd = r.stats["near_duplicates"]
    assert nd["records_without_phash"] == 10 and nd["invalid_phash"] == 1 and nd["records_with_phash"] == 19


def _brute_groups(h: list[int]) -> list[frozenset]:
    parent = list(range(len(h)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(h)):
        for j in range(i + 1, len(h)):
            if hamming(h[i], h[j]) <= NEAR_DUPLICATE_BITS:
                a, b = find(i), find(j)
                parent[max(a, b)] = min(a, b)
    groups: dict[int, set] = {}
    for i in range(len(h)):
        groups.setdefault(find(i), set()).add(i)
    return sorted(map(frozenset, groups.values()), key=min)


def test_multi_index_grouping_equals_all_pairs_at_the_bound():
    """Planted pairs at exactly the bound are found, one bit over it are not (unless chained),
    identical hashes collapse, and the result equals the all-pairs answer."""
    rng = random.Random(RNG_SEED)
    h = [rng.getrandbits(64) for _ in range(600)]
    for k in range(100):
        h.append(_flip(h[k], NEAR_DUPLICATE_BITS, rng))
        h.append(_flip(h[100 + k], NEAR_DUPLICATE_BITS + 1, rng))
        h.append(h[200 + k])
    found = near_duplicate_groups(h)
    labels = found.labels.tolist()
    got: dict[int, set] = {}
    for i, g in enumerate(labels):
        got.setdefault(g, set()).add(i)
    assert sorted(map(frozenset, got.values()), key=min) == _brute_groups(h)
    assert all(labels[600 + 3 * k] == labels[k] for k in range(100))
    assert all(labels[602 + 3 * k] == labels[200 + k] for k in range(100))
    assert found.pairs_verified < len(h) * (len(h) - 1) // 2 and not found.skipped_buckets


def test_a_degenerate_bucket_is_capped_and_reported():
    """Distinct hashes sharing all but their low bits would be a quadratic bucket: over
    max_bucket it is skipped and named, not compared."""
    h = np.arange(512, dtype=np.uint64) << np.uint64(54)  # only the top 10 bits vary
    found = near_duplicate_groups(h, max_bucket=100)
    assert found.skipped_buckets and max(found.skipped_buckets) == 512
