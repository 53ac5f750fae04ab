"""`make bench-scale`: every CPU step of the pipeline at the plan's size, through the
real code the components call, each step in its own process (time and peak RSS per step).

    python -m bench.bench_scale [--records 741533] [--species 9000] [--scales 1,0.25]
                                [--mongo-slice 20000] [--output bench/results.json] [--profile STEP]

A synthetic catalogue at the plan's size (741,533 usable records, 9,000 species with a
long tail: 27.7 % of the species have one image as in the plan, half have 1-3; four
regions; the licence mix in its usual spellings, with NC/ND, all-rights-reserved and
unclassifiable licences, too-small images, malformed lines and duplicate URLs that
ingest must reject; observations grouping consecutive photos of a species, 1.8 on
average; a few identical images under two ids; 1 % of the species names spelled
differently, which ingest normalises) is generated (numpy, seeded) and run through:

  ingest_jsonl         shared.data.ingest.run_ingest("jsonl", ...) as components/ingest.py calls it
  ingest_mongo         run_ingest("mongo", ...) with cluster.yaml's query and field_map on a
                       mongomock collection holding a slice (--mongo-slice documents); the
                       time at full size is EXTRAPOLATED linearly from the slice
  cache_fields         (synthetic, stands in for cache_images, which needs images) the
                       cached-records JSONL: sha256, cache_path, cached_width/height added,
                       identical images dropped as duplicate_content, 1 % fetch failures
  split                run_splits(): the global split and the regional ones the pipeline
                       makes (shared.data.split.run_split per teacher, as components/split.py)
  teacher_logits       (synthetic) three teachers' sparse top-32 fp16 logits in the
                       TeacherLogits format: global over all train records, EU_SW and
                       EU_CORE (EU_NORTH,EU_EAST) over their regions' train records, each
                       with the class list of its own (regional) split
  combine_soft_labels  shared.distill.soft_labels.run_combine as components/combine_soft_labels.py
  soft_label_loader    what the student does: load_jsonl(train), SoftLabels.load,
                       check_made_for, distillation.SoftLabelLookup over the train records
  training_manifest    build_training_manifest + write_manifest with the run's real audit,
                       split stats, soft-label metrics and the cluster config

Every step runs in a child process (`--child STEP`); its peak RSS is the child's own
VmHWM from /proc/self/status read at its end (the child's address space only; exec
starts it afresh), with the parent's wait4() ru_maxrss kept as a cross-check. Step
seconds are measured inside the child around the step, imports of shared/ included
(the components import inside their function too).

Targets (2 cores): each step's peak under 16 GiB; split + combine_soft_labels under
60 s at the full size; no step superlinear: with two sizes (default: full and a
quarter, records and species both scaled) the time ratio of each step is printed and
flagged above 1.5x the size ratio (6x for 4x the records).

Figures are merged into --output under the key "scale" (other keys are kept).

`--near-duplicates` (also run by `make bench-scale`, after the sizes; `--near-duplicates-only`
runs it alone) times the split's near-duplicate grouping (issue 22,
shared.data.near_duplicates.record_near_duplicates) over FULL_RECORDS records holding random
64-bit phash values with planted clusters of renditions (2-6 hashes within NEAR_DUPLICATE_BITS
of a photo), in its own child process, against the split step's memory limit (cluster kind
cpu: 8 GiB); figures under the key "near_duplicates"."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

FULL_RECORDS = 741_533  # the plan's dataset (365k iNat + 376k legacy, cache validated)
FULL_SPECIES = 9_000  # the plan's num_classes
SINGLETON_SHARE = 0.277  # the plan: 27.7 % of the classes have one image
# The project's regions (shared/data/sample_data.py): the three the regional teachers cover
# and the rest of the catalogue, which only the global teacher speaks for.
REGIONS = ("EU_SW", "EU_NORTH", "EU_EAST", "OTHER")
REGION_SHARE = (0.35, 0.20, 0.15, 0.30)
# config/cluster.yaml: teachers.regional and teachers.global_weight
GLOBAL_WEIGHT = 0.4
REGIONAL_TEACHERS = (("EU_SW", "EU_SW", 0.4), ("EU_CORE", "EU_NORTH,EU_EAST", 0.2))
TOP_K = 32  # teachers.logits_top_k
SPLIT_SEED = 42  # split.seed
MIN_SIDE = 100  # data.min_side
LICENSE_ALLOW = ["CC0", "CC-BY", "CC-BY-SA"]
CACHE_RESIZE = 448  # cache.resize

# Licence strings as catalogues write them (each parses to the family its list says).
PERMISSIVE = (  # (spelling, weight): about 45 % CC-BY, 30 % CC-BY-SA, 25 % CC0
    ("CC-BY", 0.15),
    ("cc-by-4.0", 0.15),
    ("CC BY 4.0", 0.08),
    ("https://creativecommons.org/licenses/by/4.0/", 0.07),
    ("CC-BY-SA", 0.10),
    ("cc-by-sa-4.0", 0.10),
    ("CC BY-SA 4.0", 0.05),
    ("https://creativecommons.org/licenses/by-sa/4.0/deed.es", 0.05),
    ("CC0", 0.12),
    ("cc0-1.0", 0.08),
    ("http://creativecommons.org/publicdomain/zero/1.0/", 0.05),
)
RESTRICTED = (
    "cc-by-nc-4.0",
    "CC BY-NC-SA 4.0",
    "CC-BY-ND",
    "https://creativecommons.org/licenses/by-nc/4.0/",
    "cc-by-nc-nd",
)
UNCLASSIFIED = ("All rights reserved", "custom", "see website", "(c) photographer", "Public domain")
# Lines ingest must reject, as a share of the usable records, by kind.
REJECT_SHARE = 0.075
REJECT_KINDS = (
    ("nc_nd_license", 0.55),
    ("unknown_license", 0.30),
    ("too_small", 0.05),
    ("malformed", 0.05),
    ("duplicate_url", 0.05),
)
FETCH_FAIL_SHARE = 0.01
CONTENT_DUP_SHARE = 0.003
TAXON_VARIANT_SHARE = 0.01

GIB = 1024**3
RSS_TARGET_MIB = 16 * 1024
SPLIT_COMBINE_TARGET_S = 60.0
SUPERLINEAR_FACTOR = 1.5  # flag a step whose time grows more than 1.5x the size ratio
RSS_METHOD = (
    "peak_rss_mib: VmHWM of the step's own process (/proc/self/status, read by the child at its "
    "end); ru_maxrss_mib: the parent's os.wait4() rusage of the child, its descendants included "
    "(importing torch alone reads about 640 MiB there, 520 MiB VmHWM). The 16 GiB target is judged "
    "on the larger of the two."
)

# (name, what it runs, synthetic: stands in for a step that needs images or GPUs, no target)
STEPS: list[tuple[str, str, bool]] = [
    ("generate", "synthetic catalogue JSONL (numpy, seeded)", True),
    ("ingest_jsonl", "shared.data.ingest.run_ingest('jsonl')", False),
    ("ingest_mongo", "run_ingest('mongo') on a mongomock slice, extrapolated", False),
    ("cache_fields", "cached-records JSONL (stands in for cache_images)", True),
    ("split", "run_split: global + regional splits", False),
    ("teacher_logits", "3 teachers' sparse top-k logits (synthetic)", True),
    ("combine_soft_labels", "shared.distill.soft_labels.run_combine", False),
    ("soft_label_loader", "SoftLabels.load + check_made_for + SoftLabelLookup", False),
    ("training_manifest", "build_training_manifest + write_manifest", False),
]
STEP_NAMES = [s[0] for s in STEPS]


# ---------------------------------------------------------------- the catalogue -----


def class_sizes(n_records: int, n_species: int, singleton_share: float = SINGLETON_SHARE, head: float = 0.02):
    """Images per species, largest first: a Zipf-Mandelbrot law in the species' rank
    *fraction* (so a quarter catalogue with a quarter of the species has the same
    per-class histogram), `singleton_share` of the species with one image, summing to
    exactly n_records. `head` flattens the largest classes (about 0.7 % of the images
    for the largest species at the full size)."""
    import numpy as np

    if n_species < 1 or n_records < n_species:
        raise ValueError(f"need at least one record per species: {n_records} records, {n_species} species")
    q = head * n_species
    k = np.arange(1, n_species + 1, dtype=np.float64) - 0.5
    r1 = (1 - singleton_share) * n_species

    def counts(a: float):
        return np.maximum(1, np.floor(1.5 * ((r1 + q) / (k + q)) ** a + 0.5)).astype(np.int64)

    lo, hi = 0.0, 16.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if counts(mid).sum() < n_records else (lo, mid)
    c = counts(hi)
    c[0] += n_records - c.sum()  # the rounding remainder goes to the largest class
    if c[0] < 1:  # (only for absurd inputs) take the excess from the head down
        raise ValueError(f"cannot spread {n_records} records over {n_species} species")
    return c


def species_names(n: int) -> list[str]:
    """n distinct canonical binomials (ASCII: normalize_taxon leaves them as they are)."""
    a = (
        "Ac",
        "Al",
        "Ar",
        "Be",
        "Ca",
        "Ci",
        "Co",
        "Da",
        "Er",
        "Fa",
        "Ga",
        "Hy",
        "Il",
        "Ju",
        "La",
        "Li",
        "Ma",
        "Ne",
        "Or",
        "Pa",
    )
    b = (
        "an",
        "el",
        "or",
        "ic",
        "ur",
        "am",
        "on",
        "ist",
        "ar",
        "il",
        "om",
        "en",
        "ab",
        "ul",
        "et",
        "os",
        "in",
        "ag",
        "ep",
        "ys",
    )
    ends = ("us", "a", "um", "is", "ia", "ex", "on", "ella")
    epithets = (
        "alba",
        "vulgaris",
        "officinalis",
        "montana",
        "sylvestris",
        "arvensis",
        "pratensis",
        "hispanica",
        "lusitanica",
        "borealis",
        "orientalis",
        "minor",
        "major",
        "media",
        "repens",
        "glabra",
        "hirsuta",
        "pubescens",
        "rubra",
        "lutea",
        "alpina",
        "maritima",
        "aquatica",
        "palustris",
        "canina",
        "pyrenaica",
        "balearica",
        "baetica",
        "nevadensis",
        "iberica",
        "gallica",
        "germanica",
        "austriaca",
        "carpatica",
        "pannonica",
        "rhodopea",
    )
    n_genera = max(1, -(-n // 30))  # at most 30 species a genus (< len(epithets))
    genera = [
        a[g % 20] + b[(g // 20) % 20] + ends[(g // 400) % 8] + ("" if g < 3200 else f"o{g // 3200}")
        for g in range(n_genera)
    ]
    return [f"{genera[s % n_genera]} {epithets[s // n_genera]}" for s in range(n)]


def generate(ctx: dict) -> dict:
    """The catalogue JSONL (usable records, then ingest's rejections interleaved, duplicate
    URLs at the end) and catalogue_truth.npz (per usable record: content id, fetch failure)."""
    import numpy as np

    n, c, seed = int(ctx["records"]), int(ctx["species"]), int(ctx["seed"])
    work = Path(ctx["workdir"])
    rng = np.random.default_rng(seed)
    sizes = class_sizes(n, c)
    names = species_names(c)
    species = np.repeat(np.arange(c), sizes)  # generation index -> species (species-major)
    first = np.zeros(n, bool)
    first[np.concatenate([[0], np.cumsum(sizes)[:-1]])] = True
    # Observations: runs of consecutive photos of one species (geometric, mean about 1.8).
    new_obs = first | (rng.random(n) < 0.55)
    obs = np.cumsum(new_obs) - 1
    n_obs = int(obs[-1]) + 1
    obs_species = species[new_obs]
    share = np.asarray(REGION_SHARE)
    home = rng.choice(len(REGIONS), c, p=share)
    obs_region = np.where(rng.random(n_obs) < 0.8, home[obs_species], rng.choice(len(REGIONS), n_obs, p=share))
    region = obs_region[obs]
    # Identical images: a photo sent again, under the same species (another id and URL).
    content = np.arange(n)
    dup = ~first & (rng.random(n) < CONTENT_DUP_SHARE)
    content[dup] = np.flatnonzero(dup) - 1
    while True:  # resolve chains (two duplicates in a row)
        nxt = content[content]
        if (nxt == content).all():
            break
        content = nxt
    fetch_fail = rng.random(n) < FETCH_FAIL_SHARE
    lic_names = [s for s, _ in PERMISSIVE]
    lic_p = np.array([w for _, w in PERMISSIVE])
    lic = rng.choice(len(lic_names), n, p=lic_p / lic_p.sum())
    width = rng.integers(640, 4033, n)
    height = (width * rng.choice([0.75, 1.0, 4 / 3], n)).astype(np.int64)
    inat = rng.random(n) < 365 / 741
    variant = np.where(rng.random(n) < TAXON_VARIANT_SHARE, rng.integers(0, 4, n), -1)

    def spelled(s: int, v: int) -> str:
        name = names[s]
        if v < 0:
            return name
        return (name.upper(), name.replace(" ", "  "), name.replace(" ", " \\u200b"), name.lower())[v]

    def line(iid, url, taxon, reg, license_, obs_id, src, w, h) -> str:
        head_ = f'{{"image_id": "{iid}", "image_url": "{url}", '
        tax = "" if taxon is None else f'"taxon": "{taxon}", '
        return (
            f'{head_}{tax}"region": "{reg}", "license": "{license_}", "observation_id": "{obs_id}", '
            f'"source": "{src}", "width": {w}, "height": {h}}}\n'
        )

    def url(i: int, is_inat: bool) -> str:
        return (
            f"https://inaturalist-open-data.s3.amazonaws.com/photos/{i}/original.jpg"
            if is_inat
            else f"https://media.herbarium.example.org/legacy/{i:07d}.jpg"
        )

    sp_l, reg_l, obs_l, lic_l = species.tolist(), region.tolist(), obs.tolist(), lic.tolist()
    w_l, h_l, inat_l, var_l = width.tolist(), height.tolist(), inat.tolist(), variant.tolist()
    good = [
        line(
            f"i{i:07d}",
            url(i, inat_l[i]),
            spelled(sp_l[i], var_l[i]),
            REGIONS[reg_l[i]],
            lic_names[lic_l[i]],
            f"o{obs_l[i]}",
            "inat" if inat_l[i] else "legacy",
            w_l[i],
            h_l[i],
        )
        for i in range(n)
    ]
    # Lines ingest must reject.
    n_bad = round(n * REJECT_SHARE)
    kinds = [k for k, _ in REJECT_KINDS]
    kp = np.array([p for _, p in REJECT_KINDS])
    kind = rng.choice(len(kinds), n_bad, p=kp / kp.sum()).tolist()
    bad_sp = rng.integers(0, c, n_bad).tolist()
    bad_reg = rng.integers(0, len(REGIONS), n_bad).tolist()
    bad_pick = rng.integers(0, 1 << 30, n_bad).tolist()
    bad, dups = [], []
    expected: dict[str, int] = {}
    for j in range(n_bad):
        k = kinds[kind[j]]
        iid, obs_id, reg = f"x{j:07d}", f"ox{j}", REGIONS[bad_reg[j]]
        u = f"https://media.herbarium.example.org/rejected/{j:07d}.jpg"
        if k == "nc_nd_license":
            bad.append(
                line(
                    iid,
                    u,
                    names[bad_sp[j]],
                    reg,
                    RESTRICTED[bad_pick[j] % len(RESTRICTED)],
                    obs_id,
                    "legacy",
                    1600,
                    1200,
                )
            )
            reason = "license_not_allowed"
        elif k == "unknown_license":
            bad.append(
                line(
                    iid,
                    u,
                    names[bad_sp[j]],
                    reg,
                    UNCLASSIFIED[bad_pick[j] % len(UNCLASSIFIED)],
                    obs_id,
                    "legacy",
                    1600,
                    1200,
                )
            )
            reason = "license_not_allowed"
        elif k == "too_small":
            bad.append(line(iid, u, names[bad_sp[j]], reg, "CC0", obs_id, "legacy", 64, 48))
            reason = "too_small"
        elif k == "malformed":
            if bad_pick[j] % 2:
                bad.append(line(iid, u, None, reg, "CC-BY", obs_id, "legacy", 1600, 1200))
                reason = "missing_field"
            else:
                bad.append(
                    line(iid, u, names[bad_sp[j]], reg, "CC-BY", obs_id, "legacy", 1600, 1200).replace(
                        '"width": 1600', '"width": "wide"'
                    )
                )
                reason = "malformed_field"
        else:  # the URL of a usable record under another id: written after all usable records
            i = bad_pick[j] % n
            dups.append(
                line(iid, url(i, inat_l[i]), names[sp_l[i]], REGIONS[reg_l[i]], "CC-BY", obs_id, "legacy", 1600, 1200)
            )
            reason = "duplicate_image_url"
        expected[reason] = expected.get(reason, 0) + 1
    lines = good + bad
    order = rng.permutation(len(lines)).tolist()
    path = work / "catalogue.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines[i] for i in order)
        f.writelines(dups)
    np.savez(work / "catalogue_truth.npz", content=content.astype(np.int64), fetch_fail=fetch_fail)
    info = {
        "catalogue_lines": n + n_bad,
        "usable_records": n,
        "species": c,
        "rejected_expected": n_bad,
        "rejected_expected_by_reason": dict(sorted(expected.items())),
        "observations": n_obs,
        "content_duplicates": int(dup.sum()),
        "fetch_failures": int(fetch_fail.sum()),
        "taxon_variants": int((variant >= 0).sum()),
        "species_with_1_image": int((sizes == 1).sum()),
        "species_with_1_to_3_images": int((sizes <= 3).sum()),
        "largest_species_images": int(sizes.max()),
        "median_species_images": float(np.median(sizes)),
        "catalogue_mb": round(path.stat().st_size / 1e6, 1),
    }
    (work / "catalogue_info.json").write_text(json.dumps(info, indent=2))
    return info


# ---------------------------------------------------------------- ingest -----


def ingest_jsonl(ctx: dict) -> dict:
    """components/ingest.py with data.source: jsonl."""
    from shared.data.ingest import run_ingest

    work = Path(ctx["workdir"])
    out = work / "ingest"
    out.mkdir(exist_ok=True)
    a = run_ingest(
        "jsonl",
        str(work / "catalogue.jsonl"),
        None,
        LICENSE_ALLOW,
        MIN_SIDE,
        str(out / "records.jsonl"),
        str(out / "audit.json"),
        str(out / "rejections.jsonl"),
        workdir=str(work),
    )
    info = json.loads((work / "catalogue_info.json").read_text())
    if a["records_kept"] != info["usable_records"] or a["dropped_by_reason"] != info["rejected_expected_by_reason"]:
        raise AssertionError(
            f"ingest kept {a['records_kept']} (expected {info['usable_records']}), dropped "
            f"{a['dropped_by_reason']} (expected {info['rejected_expected_by_reason']})"
        )
    return {
        "records_read": a["records_read"],
        "records_kept": a["records_kept"],
        "classes": a["classes"],
        "dropped_by_reason": a["dropped_by_reason"],
        "records_taxon_normalised": a["records_taxon_normalised"],
        "permissive_share_of_valid": a["permissive_share_of_valid"],
    }


def _mongo_doc(r: dict) -> dict:
    """A catalogue line as the MongoDB document config/cluster.yaml's field_map reads."""
    media = {k: r[k] for k in ("image_url", "license", "source", "width", "height") if k in r}
    media["url"] = media.pop("image_url")
    doc: dict[str, Any] = {
        "_id": r["image_id"],
        "status": "active",
        "observation_id": r.get("observation_id"),
        "location": {"region": r["region"]},
        "media": media,
    }
    if "taxon" in r:
        doc["taxon"] = {"scientific_name": r["taxon"]}
    return doc


def ingest_mongo(ctx: dict) -> dict:
    """components/ingest.py with data.source: mongo and cluster.yaml's data.mongo (query,
    field_map) on a mongomock collection holding the first --mongo-slice catalogue lines.
    Only run_ingest is timed; the time at full size is extrapolated linearly."""
    import mongomock
    import yaml

    import shared.data.ingest as ingest_mod

    work = Path(ctx["workdir"])
    info = json.loads((work / "catalogue_info.json").read_text())
    n_slice = min(int(ctx["mongo_slice"]), info["catalogue_lines"])
    t0 = time.perf_counter()
    docs = []
    with open(work / "catalogue.jsonl", encoding="utf-8") as f:
        for _, ln in zip(range(n_slice), f, strict=False):  # the first n_slice lines
            docs.append(_mongo_doc(json.loads(ln)))
    coll = mongomock.MongoClient().plantid.images
    coll.insert_many(docs)
    del docs
    mongo_cfg = yaml.safe_load((ROOT / "config" / "cluster.yaml").read_text())["data"]["mongo"]
    ingest_mod.mongo_collection = lambda uri_env, database, collection, timeout_ms=20000: coll
    setup_s = time.perf_counter() - t0
    out = work / "ingest_mongo"
    out.mkdir(exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    a = ingest_mod.run_ingest(
        "mongo",
        "",
        mongo_cfg,
        LICENSE_ALLOW,
        MIN_SIDE,
        str(out / "records.jsonl"),
        str(out / "audit.json"),
        str(out / "rejections.jsonl"),
        workdir=str(work),
    )
    sec, cpu = time.perf_counter() - t0, time.process_time() - c0
    if a["records_read"] != n_slice:
        raise AssertionError(f"mongo ingest read {a['records_read']} of {n_slice} documents")
    return {
        "seconds": sec,
        "cpu_seconds": cpu,
        "setup_seconds": round(setup_s, 2),
        "slice_documents": n_slice,
        "records_kept": a["records_kept"],
        "dropped_by_reason": a["dropped_by_reason"],
        "extrapolated_seconds": round(sec * info["catalogue_lines"] / n_slice, 1),
        "extrapolated_cpu_seconds": round(cpu * info["catalogue_lines"] / n_slice, 1),
        "extrapolated_to_documents": info["catalogue_lines"],
        "note": "mongomock in-process (documents deep-copied per read); time extrapolated linearly, "
        "peak RSS is the slice's",
    }


# ---------------------------------------------------------------- cache (synthetic) -----


def cache_fields(ctx: dict) -> dict:
    """The cached-records JSONL cache_images would write (docs/contracts.md "Cached records"):
    ingest's records with sha256, cache_path, cached_width, cached_height; a record whose
    image bytes were seen before is dropped (duplicate_content), 1 % fail to fetch."""
    import hashlib

    import numpy as np

    work = Path(ctx["workdir"])
    truth = np.load(work / "catalogue_truth.npz")
    content, fetch_fail = truth["content"], truth["fetch_fail"]
    out = work / "cache"
    out.mkdir(exist_ok=True)
    seen: dict[str, str] = {}
    failures: list[dict] = []
    cached = attempted = 0
    salt = f"bench-scale:{ctx['seed']}:"
    with (
        open(work / "ingest" / "records.jsonl", encoding="utf-8") as f,
        open(out / "cached.jsonl", "w", encoding="utf-8") as g,
    ):
        for ln in f:
            r = json.loads(ln)
            attempted += 1
            i = int(r["image_id"][1:])
            base = {"image_id": r["image_id"], "image_url": r["image_url"], "field": "image_url"}
            if fetch_fail[i]:
                failures.append({**base, "reason": "http_error", "detail": "HTTP 404"})
                continue
            sha = hashlib.sha256(f"{salt}{content[i]}".encode()).hexdigest()
            if sha in seen:
                failures.append({**base, "reason": "duplicate_content", "detail": f"same image as {seen[sha]}"})
                continue
            seen[sha] = r["image_id"]
            w, h = int(r.get("width") or 1600), int(r.get("height") or 1200)
            s = min(w, h)
            scale = CACHE_RESIZE / s if s > CACHE_RESIZE else 1.0
            r.update(
                sha256=sha,
                cache_path=f"{sha[:2]}/{sha}.jpg",
                cached_width=round(w * scale),
                cached_height=round(h * scale),
            )
            g.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
            cached += 1
    counts: dict[str, int] = {}
    for fl in failures:
        counts[fl["reason"]] = counts.get(fl["reason"], 0) + 1
    failed = counts.get("http_error", 0)
    report = {
        "attempted": attempted,
        "cached": cached,
        "fetched": cached,
        "reused": 0,
        "failed": failed,
        "fail_rate": round(failed / attempted, 4),
        "too_small": 0,
        "duplicates": counts.get("duplicate_content", 0),
        "label_conflicts": 0,
        "high_bit_depth": {},
        "settings": {"resize": CACHE_RESIZE, "min_side": MIN_SIDE},
        "index_checks": {},
        "fail_counts": counts,
        "seconds": 0.0,
        "images_per_second": 0.0,
        "failures": failures,
        "synthetic": "bench_scale: no image was fetched",
    }
    (out / "report.json").write_text(json.dumps(report))
    return {"attempted": attempted, "cached": cached, "fail_counts": counts}


# ---------------------------------------------------------------- split -----


def run_splits(
    cached_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    seed: int = SPLIT_SEED,
    regional: tuple = REGIONAL_TEACHERS,
) -> dict:
    """The splits the pipeline makes (pipeline.py, components/split.py): the global one
    (shared.data.split.run_split over the cached records) and, per regional teacher, its nested
    split (shared.data.split.run_regional_split over the global split's files). Outputs under
    out_dir/<name>/ (train/val/test.jsonl, stats.json, histogram.html)."""
    from shared.data.split import run_regional_split, run_split

    out = {}
    global_paths = {k: str(Path(out_dir) / "global" / f"{k}.jsonl") for k in ("train", "val", "test")}
    for name, regions in [("global", "")] + [(t, r) for t, r, _ in regional]:
        d = Path(out_dir) / name
        d.mkdir(parents=True, exist_ok=True)
        t0, c0 = time.perf_counter(), time.process_time()
        paths = {k: str(d / f"{k}.jsonl") for k in ("train", "val", "test")}
        if regions:
            s = run_regional_split(
                global_paths,
                regions,
                paths,
                str(d / "stats.json"),
                str(d / "histogram.html"),
                title=f"Class balance ({regions}, nested)",
            )
        else:
            s = run_split(
                str(cached_path),
                regions,
                seed,
                paths,
                str(d / "stats.json"),
                str(d / "histogram.html"),
                title="Class balance (all regions)",
            )
        out[name] = {
            "regions": regions,
            "seconds": round(time.perf_counter() - t0, 2),
            "cpu_seconds": round(time.process_time() - c0, 2),
            "images": s["images"],
            "classes": s["classes"],
            "leak_free": s["leakage"]["leak_free"],
        }
    return out


def split(ctx: dict) -> dict:
    work = Path(ctx["workdir"])
    return {"splits": run_splits(work / "cache" / "cached.jsonl", work / "splits", SPLIT_SEED)}


# ---------------------------------------------------------------- teacher logits (synthetic) -----


def synthetic_logits(labels, n_classes: int, k: int, rng, accuracy: float = 0.75):
    """(indices, fp16 values, logsumexp, confidences) of a plausible peaked teacher: k distinct
    classes a row (the true one first for `accuracy` of the rows), descending logits, and a
    tail of n_classes - k classes below the k-th logit."""
    import numpy as np

    n = len(labels)
    k = min(k, n_classes)
    step_max = max(1, n_classes // k)  # k-1 steps of at most step_max stay under n_classes: distinct
    start = np.where(labels >= 0, labels, rng.integers(0, n_classes, n))
    offs = np.zeros((n, k), np.int64)
    if k > 1:
        offs[:, 1:] = np.cumsum(rng.integers(1, step_max + 1, (n, k - 1)), axis=1)
    idx = ((start[:, None] + offs) % n_classes).astype(np.int32)
    if k > 1:
        wrong = np.flatnonzero(rng.random(n) > accuracy)
        j = rng.integers(1, k, len(wrong))
        idx[wrong, 0], idx[wrong, j] = idx[wrong, j], idx[wrong, 0].copy()
    vals = np.empty((n, k), np.float32)
    vals[:, 0] = 6 + 6 * rng.random(n, dtype=np.float32)
    if k > 1:
        vals[:, 1:] = vals[:, :1] - np.cumsum(rng.exponential(0.35, (n, k - 1)).astype(np.float32), axis=1)
    vals16 = vals.astype(np.float16)
    v = vals16.astype(np.float64)
    m = v[:, :1]
    lse = m[:, 0] + np.log(np.exp(v - m).sum(1))
    if n_classes > k:  # the classes outside the top k, all 2 below the k-th logit
        lse = np.logaddexp(lse, np.log(n_classes - k) + v[:, -1] - 2.0)
    conf = np.exp(v[:, 0] - lse)
    return idx, vals16, lse.astype(np.float32), conf.astype(np.float32)


def synthetic_tempered_lse(vals16, n_classes: int, temperatures: list[float]):
    """(n, m) logsumexp(z / T) of synthetic_logits' teacher (its tail 2 below the k-th logit),
    one column per temperature: what teacher_logits stores for the distillation temperature."""
    import numpy as np

    v = vals16.astype(np.float64)
    cols = []
    for t in temperatures:
        m = v[:, :1] / t
        lse = m[:, 0] + np.log(np.exp(v / t - m).sum(1))
        if n_classes > v.shape[1]:
            lse = np.logaddexp(lse, np.log(n_classes - v.shape[1]) + (v[:, -1] - 2.0) / t)
        cols.append(lse)
    return np.stack(cols, 1).astype(np.float32)


def _taxa(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(ln)["taxon"] for ln in f]


def teacher_logits(ctx: dict) -> dict:
    """What the three teacher_logits steps write (components/teacher_logits.py): each teacher
    scores the *global* train split's records of its regions, with the class list of the
    split it was trained on (global, or its regional split)."""
    import numpy as np

    from shared.config.student import load_student_config
    from shared.data.regions import parse_regions
    from shared.distill.teacher_logits import TeacherLogits, logits_temperatures
    from shared.io.records import load_jsonl

    work = Path(ctx["workdir"])
    train = load_jsonl(work / "splits" / "global" / "train.jsonl")
    out = work / "logits"
    out.mkdir(exist_ok=True)
    rng = np.random.default_rng(int(ctx["seed"]) + 1)
    figs = {}
    for name, regions, weight in [("global", "", GLOBAL_WEIGHT), *REGIONAL_TEACHERS]:
        keep = parse_regions(regions)
        recs = [r for r in train if keep is None or r.get("region") in keep]
        classes = sorted(
            {r["taxon"] for r in train} if name == "global" else set(_taxa(work / "splits" / name / "train.jsonl"))
        )
        pos = {c: i for i, c in enumerate(classes)}
        labels = np.array([pos.get(r["taxon"], -1) for r in recs], dtype=np.int32)
        idx, vals, lse, conf = synthetic_logits(labels, len(classes), TOP_K, rng)
        temps = logits_temperatures(
            load_student_config(str(ROOT / "config" / "student.yaml"))["distillation"]["temperature"]
        )
        tl = TeacherLogits(
            np.asarray([r["image_id"] for r in recs], dtype=str),
            idx,
            vals,
            lse,
            conf,
            labels,
            classes,
            name,
            regions,
            np.asarray(temps, np.float32),
            synthetic_tempered_lse(vals, len(classes), temps),
        )
        path = out / f"{name}.npz"
        tl.save(path)
        figs[name] = {
            "path": str(path),
            "weight": weight,
            "samples": len(recs),
            "classes": len(classes),
            "mb": round(path.stat().st_size / 1e6, 1),
        }
    (out / "teachers.json").write_text(json.dumps(figs, indent=2))
    return {"teachers": figs}


# ---------------------------------------------------------------- soft labels -----


def combine_soft_labels(ctx: dict) -> dict:
    """components/combine_soft_labels.py: run_combine(teachers with their artifacts' weight,
    load_jsonl(train), the student config, out, top_k)."""
    from shared.config.student import load_student_config
    from shared.distill.soft_labels import run_combine
    from shared.io.records import load_jsonl

    work = Path(ctx["workdir"])
    student_cfg = load_student_config(str(ROOT / "config" / "student.yaml"))  # the pipeline's parameter
    figs = json.loads((work / "logits" / "teachers.json").read_text())
    teachers = [(f["path"], float(f["weight"])) for f in figs.values()]
    out = work / "soft_labels.npz"
    m = run_combine(teachers, load_jsonl(work / "splits" / "global" / "train.jsonl"), student_cfg, str(out), TOP_K)
    (work / "soft_labels_metrics.json").write_text(json.dumps(m, indent=2, default=float))
    return {
        k: m[k]
        for k in ("samples", "classes", "weights", "coverage", "max_row_sum_error", "mean_entropy", "teacher_agreement")
    } | {"mb": round(out.stat().st_size / 1e6, 1)}


def soft_label_loader(ctx: dict) -> dict:
    """The student's side (shared/train/student.py): load_jsonl(train), SoftLabels.load,
    check_made_for, then distillation.SoftLabelLookup over the train records' ids."""
    from shared.distill.losses import SoftLabelLookup
    from shared.distill.soft_labels import SoftLabels
    from shared.io.records import load_jsonl

    work = Path(ctx["workdir"])
    t = [time.perf_counter()]
    train = load_jsonl(work / "splits" / "global" / "train.jsonl")
    t.append(time.perf_counter())
    soft = SoftLabels.load(work / "soft_labels.npz")
    t.append(time.perf_counter())
    soft.check_made_for(train, "soft labels")
    t.append(time.perf_counter())
    lookup = SoftLabelLookup(soft, [r["image_id"] for r in train], list(soft.classes))
    t.append(time.perf_counter())
    if lookup.coverage < 1.0:
        raise AssertionError(f"soft labels cover {lookup.coverage:.1%} of the train records")
    import torch

    _, _, has = lookup(torch.arange(min(128, len(train))))
    return {
        "samples": len(train),
        "coverage": lookup.coverage,
        "load_records_s": round(t[1] - t[0], 2),
        "soft_labels_load_s": round(t[2] - t[1], 2),
        "check_made_for_s": round(t[3] - t[2], 2),
        "lookup_s": round(t[4] - t[3], 2),
        "batch_rows": int(has.sum()),
    }


# ---------------------------------------------------------------- manifest -----


def training_manifest(ctx: dict) -> dict:
    """components/training_manifest.py with this run's real ingest audit, split stats,
    cache report and soft-label metrics, the cluster config's teacher/student configs,
    and teacher/student/calibration/export results shaped as their steps write them."""
    import importlib
    import zlib

    from shared.config.pipeline import load_pipeline_config
    from shared.config.student import load_student_config
    from shared.io.environment import environment_versions
    from shared.manifest import training_manifest as tm

    work = Path(ctx["workdir"])
    t0 = time.perf_counter()
    # The pipeline's parameters (pipeline.py): loaded before the step, as KFP passes them.
    sys.path.insert(0, str(ROOT))
    pipeline = importlib.import_module("pipeline")
    cfg = load_pipeline_config(str(ROOT / "config" / "cluster.yaml"))
    global_cfg, regional = pipeline.teacher_parameters(cfg)
    student_cfg = load_student_config(cfg["student"]["config"], cfg["student"]["overrides"])
    settings = {k: cfg[k] for k in ("data", "cache", "split", "calibration", "export", "weights")}
    # Upstream results as their steps write them (evaluate_teacher's results JSON with
    # per-class recall over the test classes, and the artifacts' metadata).
    res_dir = work / "results"
    res_dir.mkdir(exist_ok=True)
    paths = {}
    for name, _regions in [("global", ""), *[(t, r) for t, r, _ in REGIONAL_TEACHERS]]:
        stats = json.loads((work / "splits" / name / "stats.json").read_text())
        test_classes = sorted(set(_taxa(work / "splits" / name / "test.jsonl")))
        per_region = {
            r: round(0.66 + 0.02 * i + (0.15 if name != "global" else 0), 4)
            for i, r in enumerate(stats["per_region"]["test"])
        }
        res = {
            "teacher": name,
            "top1_accuracy": 0.74 if name == "global" else 0.82,
            "top5_accuracy": 0.89,
            "loss": 0.97,
            "per_region": per_region,
            "num_test": stats["images"]["test"],
            "per_class_recall": {c: round(0.5 + (zlib.crc32(c.encode()) % 50) / 100, 2) for c in test_classes},
            "num_classes_evaluated": len(test_classes),
            "share_classes_recall_above_threshold": 0.81,
        }
        paths[name] = res_dir / f"{name}_results.json"
        paths[name].write_text(json.dumps(res))
    soft_metrics = json.loads((work / "soft_labels_metrics.json").read_text())
    setup_s = time.perf_counter() - t0

    t0, c0 = time.perf_counter(), time.process_time()
    global_result = tm.read_result(paths["global"], {"teacher": "global", "top1_accuracy": 0.74})
    global_result.update(
        uri="gs://plantid/global/results",
        checkpoint="gs://plantid/global/model",
        model_name=global_cfg["model"]["name"],
    )
    regional_results = []
    for t, _r, _ in REGIONAL_TEACHERS:
        rr = tm.read_result(paths[t], {"teacher": t, "top1_accuracy": 0.82})
        rr.update(uri=f"gs://plantid/{t}/results", checkpoint=f"gs://plantid/{t}/model")
        regional_results.append(rr)
    soft = tm.read_result(
        str(work / "soft_labels.npz"), {k: soft_metrics[k] for k in ("classes", "samples", "weights", "temperature")}
    )
    soft["uri"] = "gs://plantid/soft_labels"
    phase_results = {
        "baseline": {
            "model_name": "mobilenetv2_100",
            "weights": "mobilenetv2_100.ra_in1k",
            "top1_accuracy": 0.34,
            "top5_accuracy": 0.58,
            "uri": "gs://plantid/baseline",
        },
        "global_teacher": global_result,
        "regional_teachers": regional_results,
        "soft_labels": soft,
        "student": {
            "model_name": "mobilenetv2_100",
            "classes": soft_metrics["classes"],
            "val_top1": 0.71,
            "val_top5": 0.87,
            "checkpoint": "gs://plantid/student/model",
        },
        "calibration": {
            "temperature": 1.3,
            "threshold": 0.72,
            "threshold_reached": True,
            "ece_before": 0.11,
            "ece_after": 0.05,
            "mce_after": 0.18,
            "coverage": 0.81,
            "precision_at_threshold": 0.95,
        },
        "export": {
            "uri": "gs://plantid/tfjs",
            "quantization": "fp16",
            "model_size_mb": 9.1,
            "correlation": 0.998,
            "max_abs_diff": 0.01,
            "top1_agreement": 1.0,
            "passed": True,
        },
        "export_validation": {"correlation": 0.998, "max_abs_diff": 0.01, "top1_agreement": 1.0, "passed": True},
    }

    def load(p):  # as the component's load()
        return json.loads(Path(p).read_text())

    data_stats = {
        "snapshot_id": "catalogue-bench-scale",
        "ingest": load(work / "ingest" / "audit.json"),
        "split": load(work / "splits" / "global" / "stats.json"),
        "cache": load(work / "cache" / "report.json"),
    }
    staged = {
        role: {
            "role": role,
            "model_id": mid,
            "revision": "main",
            "commit": "0" * 40,
            "pretrained": True,
            "source": "hub",
            "sha256": "ab" * 32,
            "architecture": mid.split(".")[0],
        }
        for role, mid in (
            ("global_teacher", "vit_base_patch16_384.augreg_in21k_ft_in1k"),
            ("student", "mobilenetv2_100.ra_in1k"),
            ("baseline", "mobilenetv2_100.ra_in1k"),
        )
    }
    m = tm.build_training_manifest(
        config={
            "global_teacher": global_cfg,
            "regional_teachers": regional,
            "student": student_cfg,
            "pipeline": settings,
        },
        phase_results=phase_results,
        data_stats=data_stats,
        seed=42,
        git_commit="bench-scale",
        environment=environment_versions(),
        staged_weights=staged,
    )
    out = work / "manifest"
    out.mkdir(exist_ok=True)
    tm.write_manifest(out / tm.MANIFEST_NAME, m)
    sec, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "seconds": sec,
        "cpu_seconds": cpu,
        "setup_seconds": round(setup_s, 2),
        "statuses": {k: v["status"] for k, v in m["phases"].items()},
        "manifest_kb": round((out / tm.MANIFEST_NAME).stat().st_size / 1024, 1),
        "data": {k: m["data"].get(k) for k in ("total_samples", "total_species", "train_samples", "leak_free")},
    }


STEP_FUNCS: dict[str, Callable[[dict], dict]] = {
    "generate": generate,
    "ingest_jsonl": ingest_jsonl,
    "ingest_mongo": ingest_mongo,
    "cache_fields": cache_fields,
    "split": split,
    "teacher_logits": teacher_logits,
    "combine_soft_labels": combine_soft_labels,
    "soft_label_loader": soft_label_loader,
    "training_manifest": training_manifest,
}


# ---------------------------------------------------------------- near-duplicates -----

ND_STEP = "near_duplicates"
ND_MEMORY_LIMIT_MIB = 8 * 1024  # config/cluster.yaml: kinds.cpu.memory_limit, the split step's pod
ND_CLUSTERS = 20_000


def near_duplicates(ctx: dict) -> dict:
    """The split's near-duplicate grouping over ctx["records"] synthetic records (the figure's
    seconds are the grouping's own; peak RSS includes the records)."""
    import numpy as np

    from shared.data.near_duplicates import record_near_duplicates
    from shared.data.perceptual_hash import NEAR_DUPLICATE_BITS, to_hex

    n, rng = ctx["records"], np.random.default_rng(ctx["seed"])
    hashes = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    planted, pos = 0, 0
    for _ in range(ND_CLUSTERS):  # each cluster: a photo and 1-5 renditions a few bits away
        size = int(rng.integers(2, 7))
        for k in range(1, size):
            flips = rng.choice(64, int(rng.integers(1, NEAR_DUPLICATE_BITS // 2 + 1)), replace=False)
            hashes[pos + k] = hashes[pos] ^ np.uint64(sum(1 << int(b) for b in flips))
        planted, pos = planted + size, pos + size
    records = [
        {"image_id": f"i{i:07d}", "taxon": f"t{i % 9000}", "phash": to_hex(int(h))} for i, h in enumerate(hashes)
    ]
    t0, c0 = time.perf_counter(), time.process_time()
    nd = record_near_duplicates(records)
    sec, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "seconds": sec,
        "cpu_seconds": cpu,
        "records": n,
        "planted_clusters": ND_CLUSTERS,
        "planted_records": planted,
        "groups_found": nd.stats["groups"],
        "records_in_groups": nd.stats["records_in_groups"],
        "pairs_verified": nd.stats["pairs_verified"],
        "skipped_buckets": len(nd.stats["skipped_buckets"]),
    }


def near_duplicates_bench(records: int, seed: int, log: Callable[[str], None] = print) -> dict:
    """The near-duplicate figure in a child process, checked against the split pod's memory limit."""
    work = Path(tempfile.mkdtemp(prefix="bench_nd_"))
    try:
        fig = run_step(ND_STEP, {"records": records, "seed": seed}, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if "error" not in fig:
        peak = max(fig["peak_rss_mib"], fig.get("ru_maxrss_mib", 0.0))
        fig["memory_limit_mib"] = ND_MEMORY_LIMIT_MIB
        fig["within_memory_limit"] = peak <= ND_MEMORY_LIMIT_MIB
        log(
            f"near-duplicate grouping, {records} records ({fig['planted_records']} in {ND_CLUSTERS} planted "
            f"clusters): {fig['seconds']:.1f} s, {peak:.0f} MiB peak (limit {ND_MEMORY_LIMIT_MIB} MiB), "
            f"{fig['groups_found']} groups, {fig['pairs_verified']:,} pairs verified"
        )
    else:
        log(f"near-duplicate grouping failed: {fig['error']}\n{fig.get('stderr_tail', '')}")
    return fig


# ---------------------------------------------------------------- the child -----


def _vm_hwm_mib() -> float:
    with open("/proc/self/status") as f:
        for ln in f:
            if ln.startswith("VmHWM:"):
                return int(ln.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(step: str, ctx_path: str, result_path: str, profile: str | None = None) -> None:
    """Run one step in this (fresh) process and write its figures to result_path."""
    ctx = json.loads(Path(ctx_path).read_text())
    fn = near_duplicates if step == ND_STEP else STEP_FUNCS[step]
    t0, c0 = time.perf_counter(), time.process_time()
    if profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        fig = prof.runcall(fn, ctx)
        prof.dump_stats(profile)
        with open(profile + ".txt", "w") as f:
            st = pstats.Stats(prof, stream=f)
            st.sort_stats("tottime").print_stats(30)
            st.sort_stats("cumulative").print_stats(40)
    else:
        fig = fn(ctx)
    total, cpu_total = time.perf_counter() - t0, time.process_time() - c0
    sec, cpu = fig.pop("seconds", total), fig.pop("cpu_seconds", cpu_total)
    out = {"seconds": round(sec, 2), "cpu_seconds": round(cpu, 2), "peak_rss_mib": round(_vm_hwm_mib(), 1), **fig}
    if abs(sec - total) > 0.01:
        out["step_call_seconds"] = round(total, 2)
    Path(result_path).write_text(json.dumps(out, default=str))


# ---------------------------------------------------------------- the parent -----


def run_step(step: str, ctx: dict, work: Path, profile: bool = False) -> dict:
    """Run one step as a child process; its figures, peak RSS and wall time."""
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    ctx_path, res_path = work / "ctx.json", logs / f"{step}.result.json"
    ctx_path.write_text(json.dumps(ctx))
    res_path.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "bench.bench_scale",
        "--child",
        step,
        "--ctx",
        str(ctx_path),
        "--result",
        str(res_path),
    ]
    if profile:
        cmd += ["--profile-out", str(logs / f"{step}.prof")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(logs / f"{step}.out", "w") as out, open(logs / f"{step}.err", "w") as err:
        p = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=out, stderr=err)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0 or not res_path.exists():
        tail = (logs / f"{step}.err").read_text()[-3000:]
        return {"error": f"exit status {p.returncode}", "stderr_tail": tail, "process_seconds": round(wall, 2)}
    fig = json.loads(res_path.read_text())
    fig["process_seconds"] = round(wall, 2)
    fig["ru_maxrss_mib"] = round(ru.ru_maxrss / 1024, 1)  # Linux: KiB
    fig["process_cpu_seconds"] = round(ru.ru_utime + ru.ru_stime, 2)
    # the machine may be shared: the 1-minute load average before and after the step
    fig["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    if profile:
        fig["profile"] = str(logs / f"{step}.prof.txt")
    return fig


def run_size(
    label: str,
    records: int,
    species: int,
    work: Path,
    seed: int,
    mongo_slice: int,
    profile: set[str],
    log: Callable[[str], None] = print,
) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    ctx = {"workdir": str(work), "records": records, "species": species, "seed": seed, "mongo_slice": mongo_slice}
    log(f"== bench-scale {label}: {records:,} usable records, {species:,} species (work dir {work})")
    steps: dict[str, dict] = {}
    for name, _what, synthetic in STEPS:
        fig = run_step(name, ctx, work, name in profile)
        fig["synthetic"] = synthetic
        steps[name] = fig
        if "error" in fig:
            log(f"   {name:<20} FAILED ({fig['error']}):\n{fig['stderr_tail']}")
            break
        extra = (
            f"  (extrapolated to {fig['extrapolated_to_documents']:,} docs: {fig['extrapolated_seconds']} s)"
            if name == "ingest_mongo"
            else ""
        )
        log(f"   {name:<20} {fig['seconds']:>8.2f} s  {fig['peak_rss_mib']:>9.1f} MiB peak{extra}")
        if fig.get("profile"):
            log(f"   profile: {fig['profile']}")
    info_path = work / "catalogue_info.json"
    return {
        "records": records,
        "species": species,
        "steps": steps,
        "catalogue": json.loads(info_path.read_text()) if info_path.exists() else {},
    }


def size_label(scale: float) -> str:
    return {1.0: "full", 0.5: "half", 0.25: "quarter"}.get(scale, f"x{scale:g}")


def evaluate(sizes: dict[str, dict], full_records: int = FULL_RECORDS) -> dict:
    """Targets per step and size, time ratios between the largest and the smallest size."""
    checks: dict[str, Any] = {}
    for s in sizes.values():
        for fig in s["steps"].values():
            if "error" in fig:
                continue
            synthetic = fig.get("synthetic", False)
            # judged on the larger of the two readings (see RSS_METHOD)
            peak = max(fig["peak_rss_mib"], fig.get("ru_maxrss_mib", 0.0))
            fig["rss_target_ok"] = None if synthetic else peak < RSS_TARGET_MIB
        sp, co = s["steps"].get("split", {}), s["steps"].get("combine_soft_labels", {})
        if "seconds" in sp and "seconds" in co:
            s["split_plus_combine_seconds"] = round(sp["seconds"] + co["seconds"], 2)
            s["split_plus_combine_cpu_seconds"] = round(sp["cpu_seconds"] + co["cpu_seconds"], 2)
            g = sp.get("splits", {}).get("global", {})
            if "seconds" in g:  # the critical path: the regional splits run in parallel pods
                s["global_split_plus_combine_seconds"] = round(g["seconds"] + co["seconds"], 2)
                s["global_split_plus_combine_cpu_seconds"] = round(g["cpu_seconds"] + co["cpu_seconds"], 2)
    ordered = sorted(sizes.items(), key=lambda kv: kv[1]["records"])
    ratios: dict[str, dict] = {}
    if len(ordered) >= 2:
        (small_l, small), (big_l, big) = ordered[0], ordered[-1]
        size_ratio = big["records"] / small["records"]
        for name in STEP_NAMES:
            a, b = small["steps"].get(name, {}), big["steps"].get(name, {})
            if "seconds" not in a or "seconds" not in b:
                continue
            if name == "ingest_mongo":  # the same slice at both sizes: compare the extrapolations
                ratios[name] = {"time_ratio": None, "note": "fixed slice; extrapolated linearly"}
                continue
            r = b["seconds"] / max(a["seconds"], 1e-3)
            rc = b["cpu_seconds"] / max(a["cpu_seconds"], 1e-3)
            # judged on CPU time: wall time on a shared machine also measures the other jobs
            ratios[name] = {
                "time_ratio": round(r, 2),
                "cpu_time_ratio": round(rc, 2),
                "rss_ratio": round(b["peak_rss_mib"] / a["peak_rss_mib"], 2),
                "superlinear": rc > SUPERLINEAR_FACTOR * size_ratio,
                "wall_superlinear": r > SUPERLINEAR_FACTOR * size_ratio,
            }
        checks["ratio_between"] = f"{big_l} / {small_l}"
        checks["size_ratio"] = round(size_ratio, 2)
        checks["superlinear_threshold"] = round(SUPERLINEAR_FACTOR * size_ratio, 2)
        checks["no_superlinear_step"] = not any(v.get("superlinear") for v in ratios.values())
    pipeline_figs = [f for s in sizes.values() for f in s["steps"].values() if f.get("rss_target_ok") is not None]
    checks["every_step_under_16gib"] = all(f["rss_target_ok"] for f in pipeline_figs) if pipeline_figs else None
    full = [s for s in sizes.values() if s["records"] >= full_records]
    checks["split_plus_combine_under_60s_at_full_size"] = (
        all(s.get("split_plus_combine_seconds", float("inf")) < SPLIT_COMBINE_TARGET_S for s in full) if full else None
    )
    checks["every_step_ran"] = all(
        set(s["steps"]) == set(STEP_NAMES) and not any("error" in f for f in s["steps"].values())
        for s in sizes.values()
    )
    decided = [v for v in checks.values() if isinstance(v, bool)]
    checks["passed"] = all(decided)
    return {"ratios": ratios, "checks": checks}


def _ok(v: bool | None) -> str:
    return "n/a" if v is None else ("pass" if v else "FAIL")


def report_text(res: dict) -> str:
    sizes, ratios, checks = res["sizes"], res["ratios"], res["checks"]
    labels = list(sizes)
    lines = [
        "",
        "bench-scale: per step wall seconds, CPU seconds and peak RSS (MiB, VmHWM of the step's process)",
        (
            "targets: peak < 16 GiB each step; split + combine < 60 s at full size; time ratio <= "
            f"{checks.get('superlinear_threshold', '1.5x the size ratio')} (judged on CPU time)"
        ),
    ]
    head = f"{'step':<22}" + "".join(f"{lb + ' s':>13}{'cpu s':>9}{'MiB':>9}" for lb in labels)
    if ratios:
        head += f"{'ratio':>8}{'cpu ratio':>11}"
    head += "  verdict"
    lines += [head, "-" * len(head)]
    for name, _, synthetic in STEPS:
        row = f"{name + (' *' if synthetic else ''):<22}"
        verdict = []
        for lb in labels:
            f = sizes[lb]["steps"].get(name)
            if f is None or "error" in f:
                row += f"{'-':>13}{'-':>9}{'-':>9}"
                verdict.append(f"{lb}: {'error' if f else 'not run'}")
                continue
            sec, cpu = f"{f['seconds']:.2f}", f"{f['cpu_seconds']:.2f}"
            if name == "ingest_mongo":
                sec, cpu = f"{f['extrapolated_seconds']:.1f}e", f"{f['extrapolated_cpu_seconds']:.1f}e"
            row += f"{sec:>13}{cpu:>9}{f['peak_rss_mib']:>9.0f}"
            if f.get("rss_target_ok") is False:
                verdict.append(f"{lb}: RSS FAIL")
        if ratios:
            r = ratios.get(name, {})
            row += f"{(str(r['time_ratio']) + 'x') if r.get('time_ratio') is not None else '-':>8}"
            row += f"{(str(r['cpu_time_ratio']) + 'x') if r.get('cpu_time_ratio') is not None else '-':>11}"
            if r.get("superlinear"):
                verdict.append("SUPERLINEAR")
        lines.append(row + "  " + (", ".join(verdict) if verdict else ("synthetic" if synthetic else "pass")))
    lines.append(
        "* synthetic step (stands in for a step that needs images/GPUs; no target). "
        "e: extrapolated linearly from a mongomock slice (its peak RSS is the slice's)."
    )
    for lb in labels:
        s = sizes[lb]
        if "split_plus_combine_seconds" in s:
            full = s["records"] >= FULL_RECORDS
            verdict = _ok(s["split_plus_combine_seconds"] < SPLIT_COMBINE_TARGET_S) if full else "n/a (not full size)"
            lines.append(
                f"split (global + regional, serial) + combine ({lb}): {s['split_plus_combine_seconds']:.1f} s "
                f"wall, {s['split_plus_combine_cpu_seconds']:.1f} s CPU; target < 60 s: {verdict}"
            )
            if "global_split_plus_combine_seconds" in s:
                lines.append(
                    f"  critical path, global split + combine ({lb}): "
                    f"{s['global_split_plus_combine_seconds']:.1f} s wall, "
                    f"{s['global_split_plus_combine_cpu_seconds']:.1f} s CPU (the regional splits run in "
                    "parallel pods)"
                )
    loads = [f["load_average"][0] for s in sizes.values() for f in s["steps"].values() if "load_average" in f]
    if loads:
        busy = max(loads) > (res["machine"]["cpus"] or 1)
        lines.append(
            f"machine: {res['machine']['cpus']} CPUs, 1-min load average before the steps "
            f"{min(loads):.1f}-{max(loads):.1f}"
            + (" (above the CPU count at times: wall times include other jobs, compare CPU s)" if busy else "")
        )
    for k in (
        "every_step_ran",
        "every_step_under_16gib",
        "split_plus_combine_under_60s_at_full_size",
        "no_superlinear_step",
        "passed",
    ):
        if k in checks:
            lines.append(f"{k}: {_ok(checks[k])}")
    return "\n".join(lines)


def merge_results(path: Path, scale: dict) -> None:
    """Write `scale` under the key "scale" of the JSON file, keeping its other keys."""
    from bench.results_file import merge_key

    merge_key(path, "scale", scale)


def bench(
    records: int = FULL_RECORDS,
    species: int = FULL_SPECIES,
    scales: tuple[float, ...] = (1.0, 0.25),
    seed: int = 0,
    mongo_slice: int = 20_000,
    workdir: str | None = None,
    keep: bool = False,
    profile: set[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="bench_scale_"))
    t0 = time.time()
    sizes: dict[str, dict] = {}
    try:
        for scale in scales:
            n, c = max(1, round(records * scale)), max(1, round(species * scale))
            label = size_label(scale) if records == FULL_RECORDS else f"{n}_records"
            sizes[label] = run_size(label, n, c, root / label, seed, mongo_slice, profile or set(), log)
            if not keep:
                shutil.rmtree(root / label, ignore_errors=True)
    finally:
        if not keep and not workdir:
            shutil.rmtree(root, ignore_errors=True)
    res = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "rss_method": RSS_METHOD,
        "targets": {
            "peak_rss_mib_per_step": RSS_TARGET_MIB,
            "split_plus_combine_seconds": SPLIT_COMBINE_TARGET_S,
            "superlinear_if_time_ratio_over": f"{SUPERLINEAR_FACTOR} x size ratio",
        },
        "seed": seed,
        "mongo_slice": mongo_slice,
        "sizes": sizes,
    }
    res.update(evaluate(sizes))
    res["bench_seconds"] = round(time.time() - t0, 1)
    return res


def run(tmp: str | None = None) -> dict:
    """bench.run's interface (`python -m bench.run --only bench_scale`): the default sizes."""
    return bench(workdir=os.path.join(tmp, "bench_scale") if tmp else None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=FULL_RECORDS, help="usable records at scale 1")
    ap.add_argument("--species", type=int, default=FULL_SPECIES, help="species at scale 1")
    ap.add_argument("--scales", default="1,0.25", help="sizes to run, as fractions of --records/--species")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mongo-slice", type=int, default=20_000, help="documents in the mongomock collection")
    ap.add_argument("--output", default="bench/results.json", help='JSON file; figures go under "scale"')
    ap.add_argument("--no-output", action="store_true")
    ap.add_argument("--workdir", help="keep the data here (default: a temp dir, removed)")
    ap.add_argument("--keep", action="store_true", help="keep each size's data")
    ap.add_argument("--profile", nargs="*", default=[], choices=STEP_NAMES, help="cProfile these steps")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    # the child side
    ap.add_argument("--near-duplicates-only", action="store_true", help="only the near-duplicate grouping figure")
    ap.add_argument("--child", choices=[*STEP_NAMES, ND_STEP], help=argparse.SUPPRESS)
    ap.add_argument("--ctx", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--profile-out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.child, a.ctx, a.result, a.profile_out)
        return 0
    nd = near_duplicates_bench(a.records, a.seed)
    if not a.no_output:
        from bench.results_file import merge_key

        merge_key(Path(a.output), ND_STEP, nd)
        print(f'wrote {a.output} (key "{ND_STEP}")')
    if a.near_duplicates_only:
        return 0 if "error" not in nd else 1
    scales = tuple(float(s) for s in a.scales.split(",") if s.strip())
    res = bench(
        a.records, a.species, scales, a.seed, a.mongo_slice, a.workdir, a.keep or bool(a.workdir), set(a.profile)
    )
    print(report_text(res), flush=True)
    if not a.no_output:
        merge_results(Path(a.output), res)
        print(f'wrote {a.output} (key "scale")')
    if not res["checks"]["every_step_ran"]:
        return 1
    return 1 if a.strict and not res["checks"]["passed"] else 0


if __name__ == "__main__":
    sys.exit(main())
