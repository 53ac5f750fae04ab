import random
from collections import Counter

import pytest

from shared.data.split import LeakageError, check_leakage, class_counts_for, histogram_html, run_split, stratified_split
from shared.io.records import load_jsonl, write_jsonl


def _records(sizes, region="EU_SW", start=0):
    out, n = [], start
    for t, k in sizes.items():
        for _ in range(k):
            out.append(
                {
                    "image_id": f"i{n:05d}",
                    "taxon": t,
                    "region": region,
                    "sha256": f"{n:064x}",
                    "observation_id": f"o{n}",
                }
            )
            n += 1
    return out


def test_rules_one_two_three_plus():
    assert class_counts_for(1) == (1, 0, 0)
    assert class_counts_for(2) == (1, 1, 0)
    assert class_counts_for(3) == (1, 1, 1)
    assert class_counts_for(10) == (8, 1, 1)
    assert class_counts_for(100) == (80, 10, 10)
    r = stratified_split(_records({"a": 1, "b": 2, "c": 3, "d": 10, "e": 100}))
    per = {s: Counter(x["taxon"] for x in rows) for s, rows in r.by_name().items()}
    assert per["train"] == {"a": 1, "b": 1, "c": 1, "d": 8, "e": 80}
    assert per["val"] == {"b": 1, "c": 1, "d": 1, "e": 10}
    assert per["test"] == {"c": 1, "d": 1, "e": 10}
    assert r.stats["train_val_class_overlap"] == 1.0
    assert r.stats["leakage"]["leak_free"]
    assert r.stats["class_size_histogram"]["1"] == 1 and r.stats["class_size_histogram"][">100"] == 0


def test_deterministic_for_seed_and_input_order():
    recs = _records({f"t{i}": 3 + i % 9 for i in range(40)})
    a = stratified_split(recs, seed=7)
    shuffled = recs[:]
    random.Random(3).shuffle(shuffled)
    b = stratified_split(shuffled, seed=7)
    assert [x["image_id"] for x in a.val] == [x["image_id"] for x in b.val]
    c = stratified_split(recs, seed=8)
    assert [x["image_id"] for x in a.val] != [x["image_id"] for x in c.val]


def test_region_filter_single_and_several():
    recs = (
        _records({"a": 5, "b": 5}, "EU_SW")
        + _records({"a": 4, "c": 6}, "EU_NORTH", 100)
        + _records({"d": 6}, "EU_EAST", 200)
        + _records({"e": 6}, "OTHER", 300)
    )
    sw = stratified_split(recs, regions="EU_SW")
    assert {x["region"] for s in sw.by_name().values() for x in s} == {"EU_SW"}
    assert sum(sw.stats["images"].values()) == 10
    core = stratified_split(recs, regions="EU_NORTH, EU_EAST")
    assert {x["region"] for s in core.by_name().values() for x in s} == {"EU_NORTH", "EU_EAST"}
    assert core.stats["regions"] == ["EU_EAST", "EU_NORTH"]
    assert sum(core.stats["images"].values()) == 16
    assert sum(stratified_split(recs, regions="").stats["images"].values()) == len(recs)


def test_groups_keep_observations_and_duplicate_hashes_together():
    recs = _records({"a": 30})
    for i in range(0, 30, 3):  # observations of 3 photos
        for j in range(3):
            recs[i + j]["observation_id"] = f"obs{i}"
    recs[1]["sha256"] = recs[29]["sha256"]  # same bytes in two observations
    r = stratified_split(recs, seed=1)
    where = {x["image_id"]: s for s, rows in r.by_name().items() for x in rows}
    for i in range(0, 30, 3):
        assert len({where[recs[i + j]["image_id"]] for j in range(3)}) == 1
    assert where[recs[1]["image_id"]] == where[recs[29]["image_id"]]
    assert r.stats["leakage"]["leak_free"]


def test_leakage_check_detects_conflicts():
    splits = {
        "train": [{"image_id": "1", "taxon": "a", "sha256": "h"}],
        "val": [{"image_id": "2", "taxon": "b", "sha256": "h"}],
        "test": [],
    }
    res = check_leakage(splits)
    assert not res["leak_free"] and "sha256=h in train and val" in res["conflicts"][0]
    assert res["eval_classes_missing_from_train"] == ["b"]


def test_run_split_outputs_and_histogram(tmp_path):
    cached = tmp_path / "cached.jsonl"
    write_jsonl(cached, _records({"a": 12, "b": 3, "c": 1}))
    out = {s: str(tmp_path / f"{s}.jsonl") for s in ("train", "val", "test")}
    stats = run_split(str(cached), "", 42, out, str(tmp_path / "stats.json"), str(tmp_path / "h.html"))
    assert stats["images"] == {"train": 12, "val": 2, "test": 2}  # a: 10/1/1, b: 1/1/1, c: 1
    assert all(r["split"] == "train" for r in load_jsonl(out["train"]))
    page = (tmp_path / "h.html").read_text()
    assert "<svg" in page and "no leakage" in page
    with pytest.raises(ValueError, match="nothing to split"):
        run_split(str(cached), "MARS", 42, out, str(tmp_path / "s2.json"), str(tmp_path / "h2.html"))


def test_histogram_reports_leakage():
    stats = stratified_split(_records({"a": 5})).stats
    stats["leakage"] = {"leak_free": False, "conflicts": ["sha256=x in train and val"]}
    assert "LEAKAGE" in histogram_html(stats)


def _mixed_catalogue():
    recs = _records({"A": 30, "B": 12, "C": 3, "D": 2}, region="EU_SW")
    recs += _records({"A": 20, "E": 9, "F": 1}, region="EU_NORTH", start=1000)
    recs += _records({"B": 15, "E": 6}, region="EU_EAST", start=2000)
    return recs


def test_regional_splits_are_the_regions_part_of_the_global_split():
    from shared.data.split import nested_regional_split

    g = stratified_split(_mixed_catalogue(), seed=3)
    role = {r["image_id"]: name for name, rows in g.by_name().items() for r in rows}
    for regions in ("EU_SW", "EU_NORTH,EU_EAST"):
        r = nested_regional_split(g.by_name(), regions)
        assert r.stats["leakage"]["leak_free"]
        wanted = set(regions.split(","))
        for name, rows in r.by_name().items():
            assert all(role[x["image_id"]] == name and x["region"] in wanted for x in rows), (regions, name)
        train_classes = {x["taxon"] for x in r.train}
        assert {x["taxon"] for x in r.val + r.test} <= train_classes  # every eval class learnable
        # nothing of the region is lost except images of species it cannot learn (counted)
        in_region = [x for rows in g.by_name().values() for x in rows if x["region"] in wanted]
        kept = len(r.train) + len(r.val) + len(r.test)
        assert kept + sum(r.stats["unlearnable_in_region"].values()) == len(in_region)


def test_a_species_whose_regional_images_are_all_held_out_leaves_the_regional_eval_sets():
    from shared.data.split import nested_regional_split

    # "Q" has 3 images: globally 1 train / 1 val / 1 test; only the val one is in EU_EAST
    recs = _records({"Q": 3}, region="EU_SW")
    g = stratified_split(recs, seed=1)
    held = dict(g.val[0], region="EU_EAST")
    splits = {"train": g.train, "val": [held], "test": g.test}
    r = nested_regional_split(splits, "EU_EAST,EU_SW")
    assert r.stats["unlearnable_in_region"] == {"val": 0, "test": 0}  # EU_SW's train image teaches Q
    r = nested_regional_split({"train": [], "val": [held], "test": []}, "EU_EAST")
    assert r.val == [] and r.stats["unlearnable_in_region"]["val"] == 1 and r.stats["unlearnable_classes"] == ["Q"]


def test_nesting_check_catches_a_role_change_and_a_stranger():
    from shared.data.split import check_nesting

    g = stratified_split(_mixed_catalogue(), seed=3).by_name()
    moved = {"train": g["train"] + [g["val"][0]], "val": [], "test": []}
    out = check_nesting(g, moved)
    assert not out["nested"] and "is train for the regional teacher but val globally" in out["conflicts"][0]
    stranger = {"train": [{"image_id": "zzz", "taxon": "A", "region": "EU_SW"}], "val": [], "test": []}
    assert "not in the global split" in check_nesting(g, stranger)["conflicts"][0]


def test_run_regional_split_fails_on_leakage_and_on_an_empty_region(tmp_path):
    from shared.data.split import run_regional_split

    g = stratified_split(_mixed_catalogue(), seed=3).by_name()
    paths = {}
    for name, rows in g.items():
        paths[name] = str(tmp_path / f"g_{name}.jsonl")
        write_jsonl(paths[name], rows)
    outs = {n: str(tmp_path / f"r_{n}.jsonl") for n in g}
    s = run_regional_split(paths, "EU_NORTH,EU_EAST", outs, str(tmp_path / "s.json"), str(tmp_path / "h.html"))
    assert s["leakage"]["leak_free"] and s["nested_in"] == "global split"
    assert {r["region"] for r in load_jsonl(outs["train"])} == {"EU_NORTH", "EU_EAST"}
    with pytest.raises(ValueError, match="no record of regions 'EU_WEST'"):
        run_regional_split(paths, "EU_WEST", outs, str(tmp_path / "s.json"), str(tmp_path / "h.html"))
    write_jsonl(paths["val"], g["val"] + [g["train"][0]])  # an image in two roles of the global split
    with pytest.raises(LeakageError):
        run_regional_split(paths, "EU_SW,EU_NORTH,EU_EAST", outs, str(tmp_path / "s.json"), str(tmp_path / "h.html"))
