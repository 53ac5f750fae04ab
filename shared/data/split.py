"""The plan's stratified split (steps 1.0 / 2.0 / 2b.0): per class, 1 image -> train
only, 2 -> 1 train / 1 val, 3 or more -> 80/10/10; deterministic for a seed; an
optional region filter for the regional teachers; a leakage check (no image hash,
near-duplicate photo or observation in two splits, every val/test class present in
train); class balance statistics and an HTML histogram.

Near-duplicates (issue 22): records whose perceptual hashes (`phash`, set by
cache_images) are within NEAR_DUPLICATE_BITS are one photo, grouped like identical bytes;
one photo under two species is a label conflict: those records leave the split (neither
name is trained or scored on) and stats["label_conflicts"] names them. Records without a
phash (older caches) are grouped by observation and bytes only, as before."""

from __future__ import annotations

import hashlib
import html
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared import artifact_keys as K
from shared.data.near_duplicates import RecordNearDuplicates, label_conflicts, record_near_duplicates
from shared.data.regions import parse_regions

SPLITS = ("train", "val", "test")
HIST_BUCKETS = ((1, 1), (2, 2), (3, 5), (6, 10), (11, 20), (21, 50), (51, 100), (101, 10**12))


class LeakageError(ValueError):
    """The split put the same image or observation in two splits."""


@dataclass
class SplitResult:
    train: list[dict]
    val: list[dict]
    test: list[dict]
    stats: dict[str, Any]

    def by_name(self) -> dict[str, list[dict]]:
        return {"train": self.train, "val": self.val, "test": self.test}


def _stable_u64(text: str, seed: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{text}".encode(), digest_size=8).digest(), "big")


def _groups(records: list[dict], near: list[int | None] | None = None) -> list[int]:
    """Union-find over observation_id, sha256 and near-duplicate group (`near[i]`, None when
    record i has no phash): images sharing any stay together."""
    parent = list(range(len(records)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, r in enumerate(records):
        for key in (
            ("o:" + str(r["observation_id"])) if r.get("observation_id") else None,
            ("h:" + r["sha256"]) if r.get("sha256") else None,
            f"n:{near[i]}" if near is not None and near[i] is not None else None,
        ):
            if key is None:
                continue
            j = first.setdefault(key, i)
            if j != i:
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return [find(i) for i in range(len(records))]


def class_counts_for(n: int, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> tuple[int, int, int]:
    """How many units of a class go to train/val/test under the plan's rules."""
    if n <= 0:
        return 0, 0, 0
    if n == 1:
        return 1, 0, 0
    if n == 2:
        return 1, 1, 0
    n_val = max(1, int(round(n * ratios[1])))
    n_test = max(1, int(round(n * ratios[2])))
    return n - n_val - n_test, n_val, n_test


def stratified_split(
    records: list[dict],
    seed: int = 42,
    regions: str | Iterable[str] | None = None,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> SplitResult:
    """Split records per class by the plan's rules; groups (observation / identical
    image) are the unit, so nothing leaks. Deterministic for (records, seed)."""
    region_set = parse_regions(regions)
    pool = [r for r in records if region_set is None or r.get("region") in region_set]
    # Sort by a stable key so the result does not depend on input order.
    pool.sort(key=lambda r: (str(r.get("taxon")), str(r.get("image_id"))))
    nd = record_near_duplicates(pool)
    pool, near, conflicts = _drop_label_conflicts(pool, nd)
    group_of = _groups(pool, near)
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(group_of):
        members[g].append(i)
    class_groups: dict[str, list[int]] = defaultdict(list)
    for g in members:  # a group belongs to the class of its first (sorted) record
        class_groups[pool[g]["taxon"]].append(g)

    assign = np.empty(len(pool), dtype=np.int8)
    for taxon, groups in class_groups.items():
        groups.sort(key=lambda g: _stable_u64(f"{taxon}|{pool[g]['image_id']}", seed))
        n_train, n_val, _ = class_counts_for(len(groups), ratios)
        for rank, g in enumerate(groups):
            s = 0 if rank < n_train else (1 if rank < n_train + n_val else 2)
            assign[members[g]] = s
    out: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for i, r in enumerate(pool):
        name = SPLITS[assign[i]]
        out[name].append({**r, "split": name})
    for name in SPLITS:
        out[name].sort(key=lambda r: str(r.get("image_id")))
    leakage = check_leakage(out, near_groups={str(r.get("image_id")): g for r, g in zip(pool, near, strict=True)})
    stats = split_stats(
        out,
        leakage,
        seed=seed,
        regions=sorted(region_set) if region_set else None,
        input_records=len(records),
        near_duplicates=nd.stats,
        label_conflicts={
            "groups": len(conflicts),
            "records": sum(len(g) for g in conflicts),
            "examples": conflicts[:10],
        },
    )
    return SplitResult(out["train"], out["val"], out["test"], stats)


def _drop_label_conflicts(
    pool: list[dict], nd: RecordNearDuplicates
) -> tuple[list[dict], list[int | None], list[list[dict]]]:
    """The pool without near-duplicate groups under two species, their near-duplicate groups,
    and the conflicting groups (for the stats)."""
    conflicts = label_conflicts(pool, nd)
    if not conflicts:
        return pool, nd.group, []
    keep = [i for i, g in enumerate(nd.group) if g not in conflicts]
    return [pool[i] for i in keep], [nd.group[i] for i in keep], list(conflicts.values())


def check_leakage(splits: dict[str, list[dict]], near_groups: dict[str, int | None] | None = None) -> dict[str, Any]:
    """No image hash, image id, observation or near-duplicate photo in two splits; val/test
    classes in train. `near_groups` (image_id -> near-duplicate group) saves recomputing the
    groups the split was made with; without it they are computed from the records' phash."""
    owners: dict[str, dict[str, str]] = {"sha256": {}, "observation_id": {}, "image_id": {}}
    conflicts: list[str] = []
    for name in SPLITS:
        for r in splits.get(name, []):
            for key in owners:
                v = r.get(key)
                if not v:
                    continue
                prev = owners[key].setdefault(str(v), name)
                if prev != name and len(conflicts) < 20:
                    conflicts.append(f"{key}={v} in {prev} and {name}")
    conflicts += _near_duplicate_leaks(splits, near_groups)[: max(0, 20 - len(conflicts))]
    train_classes = {r["taxon"] for r in splits.get("train", [])}
    missing = sorted({r["taxon"] for s in ("val", "test") for r in splits.get(s, [])} - train_classes)
    return {
        "leak_free": not conflicts,
        "conflicts": conflicts,
        "eval_classes_missing_from_train": missing[:50],
        "eval_classes_missing_from_train_count": len(missing),
    }


def _near_duplicate_leaks(splits: dict[str, list[dict]], near_groups: dict[str, int | None] | None) -> list[str]:
    """Near-duplicate photos (phash within NEAR_DUPLICATE_BITS) held by two splits."""
    rows = [(name, r) for name in SPLITS for r in splits.get(name, [])]
    if near_groups is None:
        labels = record_near_duplicates([r for _, r in rows]).group
    else:
        labels = [near_groups.get(str(r.get("image_id"))) for _, r in rows]
    owner: dict[int, tuple[str, dict]] = {}
    out: list[str] = []
    for (name, r), g in zip(rows, labels, strict=True):
        if g is None:
            continue
        prev_name, prev = owner.setdefault(g, (name, r))
        if prev_name != name and len(out) < 20:
            out.append(
                f"near-duplicate images {prev.get('image_id')} ({prev_name}, phash {prev.get('phash')}) and "
                f"{r.get('image_id')} ({name}, phash {r.get('phash')})"
            )
    return out


def split_stats(splits: dict[str, list[dict]], leakage: dict, **extra: Any) -> dict[str, Any]:
    per_class_train = Counter(r["taxon"] for r in splits["train"])
    per_class_all = Counter(r["taxon"] for s in SPLITS for r in splits[s])
    val_classes = {r["taxon"] for r in splits["val"]}
    hist = {
        f"{lo}" if lo == hi else (f"{lo}-{hi}" if hi < 10**12 else f">{lo - 1}"): sum(
            1 for c in per_class_all.values() if lo <= c <= hi
        )
        for lo, hi in HIST_BUCKETS
    }
    return {
        **extra,
        "images": {s: len(splits[s]) for s in SPLITS},
        "classes": {s: len({r["taxon"] for r in splits[s]}) for s in SPLITS},
        "classes_total": len(per_class_all),
        "per_region": {s: dict(sorted(Counter(r.get("region", "") for r in splits[s]).items())) for s in SPLITS},
        "train_val_class_overlap": (len(val_classes & set(per_class_train)) / len(val_classes) if val_classes else 1.0),
        "leakage": leakage,
        "class_size_histogram": hist,
        "images_per_class": dict(sorted(per_class_all.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def histogram_html(stats: dict[str, Any], title: str = "Class balance") -> str:
    """A self-contained HTML page: the class-size histogram and the largest classes."""
    hist = stats["class_size_histogram"]
    top = list(stats["images_per_class"].items())
    peak = max(hist.values()) or 1
    bar_w, gap, h = 60, 12, 200
    bars = []
    for i, (label, count) in enumerate(hist.items()):
        bh = int(h * count / peak)
        x = i * (bar_w + gap) + 10
        bars.append(
            f'<rect x="{x}" y="{h - bh + 20}" width="{bar_w}" height="{bh}" fill="#3a7d44"/>'
            f'<text x="{x + bar_w / 2}" y="{h + 38}" text-anchor="middle">{html.escape(label)}</text>'
            f'<text x="{x + bar_w / 2}" y="{h - bh + 15}" text-anchor="middle">{count}</text>'
        )
    width = len(hist) * (bar_w + gap) + 20
    rows = "".join(f"<tr><td>{html.escape(t)}</td><td>{c}</td></tr>" for t, c in top[:30])
    counts = " / ".join(f"{s}: {stats['images'][s]} images, {stats['classes'][s]} classes" for s in SPLITS)
    leak = "no leakage" if stats["leakage"]["leak_free"] else "LEAKAGE: " + "; ".join(stats["leakage"]["conflicts"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:20px}} td{{padding:2px 10px}} text{{font-size:12px}}</style></head>
<body><h2>{html.escape(title)}</h2><p>{counts}</p><p>{html.escape(leak)}; train/val class overlap
{stats["train_val_class_overlap"]:.1%}</p>
<h3>Classes by number of images</h3>
<svg width="{width}" height="{h + 50}">{"".join(bars)}</svg>
<h3>Largest classes</h3><table><tr><th>taxon</th><th>images</th></tr>{rows}</table></body></html>"""


def run_split(
    cached_path: str,
    regions: str,
    seed: int,
    out_paths: dict[str, str],
    out_stats: str,
    out_histogram: str,
    title: str = "Class balance",
) -> dict[str, Any]:
    """The split step over a cached-records JSONL; fails on leakage."""
    from shared.io.records import load_jsonl

    result = stratified_split(load_jsonl(cached_path), seed=seed, regions=regions)
    return write_split(
        result,
        out_paths,
        out_stats,
        out_histogram,
        title,
        what="split",
        empty=f"no cached records for regions {regions!r}: nothing to split",
    )


def write_split(
    result: SplitResult,
    out_paths: dict[str, str],
    out_stats: str,
    out_histogram: str,
    title: str,
    *,
    what: str,
    empty: str,
) -> dict[str, Any]:
    """Refuse a leaking or empty split (naming why), else write its JSONLs, stats and histogram."""
    from shared.io.atomic import write_json, write_text
    from shared.io.records import write_jsonl

    if not result.stats["leakage"]["leak_free"]:
        raise LeakageError(f"{what} leaks: " + "; ".join(result.stats["leakage"]["conflicts"]))
    if not result.train:
        raise ValueError(empty)
    for name, rows in result.by_name().items():
        write_jsonl(out_paths[name], rows)
    write_json(out_stats, result.stats)
    write_text(out_histogram, histogram_html(result.stats, title))
    return result.stats


def nested_regional_split(global_splits: dict[str, list[dict]], regions: str | Iterable[str]) -> SplitResult:
    """A regional teacher's split as the region's part of the global split (plan 2.0 / 2b.0,
    nested): its train/val/test are the region's records of the global train/val/test, so no
    image the global teacher or the student holds out is ever trained on, and every teacher
    can be scored on the one global test set.

    The plan's 1 / 2 / 3+ rule is applied once, globally; the region needs its own minimum
    only where the global split put all of a species' regional images in val or test: that
    species cannot be learnt from the region, so those images leave the regional val/test
    (they stay in the global test set, where every teacher is scored) and are counted in
    stats["unlearnable_in_region"]. Every regional val/test class is thus in regional train."""
    region_set = parse_regions(regions)
    if region_set is None:
        raise ValueError(f"regions {regions!r}: names no region")
    part = {name: [r for r in global_splits[name] if r.get("region") in region_set] for name in SPLITS}
    train_classes = {r["taxon"] for r in part["train"]}
    dropped = {name: [r for r in part[name] if r["taxon"] not in train_classes] for name in ("val", "test")}
    for name in ("val", "test"):
        part[name] = [r for r in part[name] if r["taxon"] in train_classes]
    leakage = check_leakage(part)
    nesting = check_nesting(global_splits, part)
    leakage["leak_free"] = leakage["leak_free"] and nesting["nested"]
    leakage["conflicts"] += nesting["conflicts"]
    stats = split_stats(
        part,
        leakage,
        seed=None,
        regions=sorted(region_set),
        nested_in="global split",
        input_records=sum(len(v) for v in global_splits.values()),
        unlearnable_in_region={k: len(v) for k, v in dropped.items()},
        unlearnable_classes=sorted({r["taxon"] for v in dropped.values() for r in v})[:50],
    )
    return SplitResult(part["train"], part["val"], part["test"], stats)


def check_nesting(global_splits: dict[str, list[dict]], part: dict[str, list[dict]]) -> dict[str, Any]:
    """Every image, identical image (sha256) and observation of a regional split has the same
    role (train/val/test) in the global split: across all teachers nothing is held out for
    one and trained on by another."""
    role: dict[str, str] = {}
    for name in SPLITS:
        for r in global_splits.get(name, []):
            for key in ("image_id", "sha256", "observation_id"):
                if r.get(key):
                    role.setdefault(f"{key}={r[key]}", name)
    conflicts = []
    for name in SPLITS:
        for r in part.get(name, []):
            for key in ("image_id", "sha256", "observation_id"):
                if r.get(key):
                    g = role.get(f"{key}={r[key]}")
                    if g is not None and g != name and len(conflicts) < 20:
                        conflicts.append(f"{key}={r[key]} is {name} for the regional teacher but {g} globally")
            if not r.get("image_id") or f"image_id={r['image_id']}" not in role:
                if len(conflicts) < 20:
                    conflicts.append(f"image_id={r.get('image_id')} is not in the global split")
    return {"nested": not conflicts, "conflicts": conflicts}


def run_regional_split(
    global_paths: dict[str, str],
    regions: str,
    out_paths: dict[str, str],
    out_stats: str,
    out_histogram: str,
    title: str = "Class balance",
) -> dict[str, Any]:
    """The regional split step: the region's part of the global split; fails on leakage."""
    from shared.io.records import load_jsonl

    result = nested_regional_split({name: load_jsonl(p) for name, p in global_paths.items()}, regions)
    return write_split(
        result,
        out_paths,
        out_stats,
        out_histogram,
        title,
        what="regional split",
        empty=f"the global train split has no record of regions {regions!r}: nothing to train on",
    )


def split_metrics(stats: dict[str, Any]) -> dict[str, float]:
    """The KFP Metrics of a split step (stable names)."""
    out: dict[str, float] = {}
    for name in SPLITS:
        out[name + K.IMAGES_SUFFIX] = stats["images"][name]
        out[name + K.CLASSES_SUFFIX] = stats["classes"][name]
    out[K.TRAIN_VAL_CLASS_OVERLAP] = stats["train_val_class_overlap"]
    out[K.LEAK_FREE] = float(stats["leakage"]["leak_free"])
    for name, n in (stats.get("unlearnable_in_region") or {}).items():
        out[K.UNLEARNABLE_IN_REGION_PREFIX + name] = n
    return out
