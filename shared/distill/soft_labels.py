"""Phase 3: combine several teachers' sparse logits into soft labels for the student.

Teachers have different class sets: the union class space is built (sorted class
names) and every teacher is aligned to it by name. Each teacher has a weight
and optionally the regions it speaks for; a sample gets, at temperature T (the
plan's T=3),

    q(c) = sum_t w_t p_t(c) / sum_t w_t,   p_t(c) = exp(z_t,c / T - logsumexp_c'(z_t,c' / T))

over the teachers that apply to it (the teacher scored the sample and the
sample's region is one of the teacher's), i.e. the weights are renormalised per
sample (effective_weights lists them per coverage pattern). Averaging
probabilities (not logits) is what makes teachers with different class sets
combinable. Each teacher's p_t is exact on the classes it stored (the log-sum-exp
at T is stored with its logits, shared/distill/teacher_logits.py). The soft label
keeps the k classes of largest q and one more bin, `rest` = 1 - (their sum), so
the k + 1 bins are a distribution: the plan's T distribution, not the kept
classes renormalised (at 9,000 classes the top 32 hold a few % of the T=3 mass).

What is exact and what is a bound: with one applicable teacher, or when every
applicable teacher stored every kept class, the kept values are q(c) exactly (to
fp16 logit rounding) and `rest` is exactly the mass of the other classes. When a
kept class is in one teacher's stored top-k but in another's tail, that teacher's
share of it is unknown: the value holds only the stored part (a lower bound) and
the missing part sits in `rest`. Per teacher the missing part is at most
min(n_missing * p_t(its k-th stored class), 1 - p_t's stored mass) times its
effective weight; kept_mass_shortfall_bound sums it per sample (0 where exact).
Classes a teacher does not know get nothing from it (its q there is 0, exactly).

Work is done in chunks: never a dense N x C matrix."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from shared.distill.teacher_logits import TeacherLogits, topk_probs
from shared.io.atomic import load_npz, save_npz

# |kept + rest - 1| beyond this is a file whose numbers disagree (fp16 inputs give ~1e-3)
_ROW_SUM_TOLERANCE = 2e-3


@dataclass
class TeacherSpec:
    logits: TeacherLogits
    weight: float
    regions: set[str] | None = None  # None: every region


@dataclass
class SoftLabels:
    image_ids: np.ndarray  # (N,) str
    indices: np.ndarray  # (N, k) int32 into classes, by descending probability
    values: np.ndarray  # (N, k) float32 probabilities at `temperature` (not renormalised)
    classes: list[str]
    temperature: float
    records_digest: str = ""  # records_digest() of the train records they were made for
    rest: np.ndarray | None = None  # (N,) float32 mass of every other class; None: 1 - sum(values)

    def __post_init__(self) -> None:
        n = len(self.image_ids)
        self.values = np.asarray(self.values, np.float32)
        if self.indices.ndim != 2 or self.indices.shape != self.values.shape or self.indices.shape[0] != n:
            raise ValueError(
                f"soft labels: indices {self.indices.shape} and values {self.values.shape} must both be ({n}, k)"
            )
        kept = self.values.astype(np.float64).sum(1)
        if self.rest is None:
            self.rest = np.clip(1.0 - kept, 0.0, None)
        self.rest = np.asarray(self.rest, np.float32)
        if self.rest.shape != (n,):
            raise ValueError(f"soft labels: rest has shape {self.rest.shape}, expected ({n},)")
        if not n:
            return
        bad = (self.values < 0).any(1) | (self.rest < 0) | (np.abs(kept + self.rest - 1) > _ROW_SUM_TOLERANCE)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"soft labels: sample {self.image_ids[i]} is not a distribution (kept {kept[i]:.6f} + rest "
                f"{self.rest[i]:.6f}, min value {self.values[i].min():.3g})"
            )

    @property
    def kept_mass(self) -> np.ndarray:
        """(N,) probability mass at T of the k kept classes (1 - rest)."""
        return 1.0 - self.rest

    def save(self, path: str | os.PathLike) -> None:
        save_npz(
            path,
            image_ids=np.asarray(self.image_ids, dtype=str),
            indices=self.indices.astype(np.int32),
            values=self.values.astype(np.float32),
            rest=np.asarray(self.rest, np.float32),
            classes=np.asarray(self.classes, dtype=str),
            temperature=np.asarray(self.temperature, dtype=np.float32),
            records_digest=np.asarray(self.records_digest, dtype=str),
            classes_digest=np.asarray(classes_digest(self.classes), dtype=str),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> SoftLabels:
        z = load_npz(path, "soft labels")
        if "rest" not in z:
            raise ValueError(
                f"soft labels {path} were made by an older version: no 'rest' array, so their values are "
                "the top-k renormalised to 1, not the probabilities at T with the rest as one bin; "
                "re-run combine_soft_labels"
            )
        try:
            sl = cls(
                z["image_ids"],
                z["indices"],
                z["values"],
                [str(c) for c in z["classes"]],
                float(z["temperature"]),
                str(z["records_digest"]),
                z["rest"],
            )
            stored = str(z["classes_digest"])
        except KeyError as e:
            raise ValueError(
                f"soft labels {path} lack the array {e} (made by an older version? re-run combine_soft_labels)"
            ) from None
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        if stored != classes_digest(sl.classes):
            raise ValueError(f"soft labels {path}: the class list does not match its recorded digest")
        return sl

    def check_made_for(self, records: list[dict], what: str = "soft labels") -> None:
        """Refuse soft labels made for other train records or another class list: a student would
        otherwise report distillation with no sample covered, or ship the wrong classes."""
        if self.records_digest != records_digest(records):
            ids = {str(r["image_id"]) for r in records}
            mine = {str(s) for s in self.image_ids}
            raise ValueError(
                f"{what} were made for other train records ({len(mine & ids)} of {len(ids)} train "
                f"images in common, digest {self.records_digest[:12] or 'none'} vs "
                f"{records_digest(records)[:12]}): re-run combine_soft_labels on this split"
            )
        missing = sorted({str(r["taxon"]) for r in records} - set(self.classes))
        if missing:
            raise ValueError(
                f"{what}: {len(missing)} species of the train records are not in their class list, e.g. {missing[:3]}"
            )

    def bytes_per_sample(self) -> float:
        """int32 index and float32 probability per kept class, and the float32 rest bin."""
        return self.indices.shape[1] * (4 + 4) + 4


def records_digest(records: list[dict]) -> str:
    """sha256 over the train records' (image_id, taxon) pairs, order-independent."""
    h = hashlib.sha256()
    for line in sorted(f"{r['image_id']}\t{r['taxon']}" for r in records):
        h.update(line.encode("utf-8", "surrogatepass") + b"\n")
    return h.hexdigest()


def classes_digest(classes: list[str]) -> str:
    return hashlib.sha256("\n".join(classes).encode("utf-8", "surrogatepass")).hexdigest()


def union_classes(teachers: list[TeacherSpec]) -> list[str]:
    return sorted(set().union(*(t.logits.classes for t in teachers)))


def applicable_rows(teachers: list[TeacherSpec], sample_ids: list[str], sample_regions: list[str]) -> np.ndarray:
    """(teachers, N): each sample's row in each teacher's logits, -1 where the teacher did
    not score it or does not speak for its region."""
    sample_pos = {str(s): i for i, s in enumerate(sample_ids)}
    rows = np.full((len(teachers), len(sample_ids)), -1, dtype=np.int64)
    for t_i, t in enumerate(teachers):
        for j, sid in enumerate(t.logits.image_ids):
            i = sample_pos.get(str(sid))
            if i is not None and (t.regions is None or sample_regions[i] in t.regions):
                rows[t_i, i] = j
    return rows


def combine_soft_labels(
    teachers: list[TeacherSpec],
    sample_ids: list[str],
    sample_regions: list[str],
    temperature: float,
    k: int = 32,
    chunk: int = 1024,
) -> SoftLabels:
    """Soft labels for `sample_ids` (see the module docstring). A sample no teacher
    covers is an error naming it: the global teacher should cover every train sample."""
    if not teachers:
        raise ValueError("no teachers to combine")
    for t in teachers:
        if t.weight < 0:
            raise ValueError(f"teacher {t.logits.name!r}: negative weight {t.weight}")
    classes = union_classes(teachers)
    pos = {c: i for i, c in enumerate(classes)}
    n, c_union = len(sample_ids), len(classes)
    k = min(k, c_union)
    rows = applicable_rows(teachers, sample_ids, sample_regions)
    probs, maps = [], []
    for t in teachers:
        class_map = np.array([pos[c] for c in t.logits.classes], dtype=np.int64)
        idx, p = topk_probs(t.logits, temperature)  # exact at T: an error if T was not stored
        probs.append(p)
        maps.append(class_map[idx])
    weights = np.array([t.weight for t in teachers], dtype=np.float64)
    wsum = ((rows >= 0) * weights[:, None]).sum(0)
    missing = np.flatnonzero(wsum <= 0)
    if len(missing):
        ex = ", ".join(str(sample_ids[i]) for i in missing[:5])
        raise ValueError(
            f"{len(missing)} samples have no applicable teacher (e.g. {ex}); the global "
            "teacher's logits must cover every train sample"
        )
    out_idx = np.zeros((n, k), np.int32)
    out_val = np.zeros((n, k), np.float32)
    rest = np.zeros(n, np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        idx, val = _combine_chunk(list(rows), maps, probs, weights, start, stop, c_union, k)
        val /= wsum[start:stop, None]  # the weights renormalised over the teachers that apply
        out_idx[start:stop], out_val[start:stop] = idx, val
        rest[start:stop] = np.clip(1.0 - val.sum(1), 0.0, None)
    return SoftLabels(np.asarray(sample_ids, dtype=str), out_idx, out_val, classes, float(temperature), rest=rest)


def _combine_chunk(
    rows: list[np.ndarray],
    maps: list[np.ndarray],
    probs: list[np.ndarray],
    weights: np.ndarray,
    start: int,
    stop: int,
    c_union: int,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows start..stop of sum_t w_t p_t(c) over the candidates, sparsely: each row has at most
    (teachers x teacher k) candidate classes, so work and memory grow with records, never
    with records x classes. Repeated classes are summed and the top k kept (descending),
    float64, not yet divided by the row's weight sum. A row with fewer than k candidates
    is padded with probability 0 on its top class."""
    m = stop - start
    r_parts, c_parts, v_parts = [], [], []
    for t, r in enumerate(rows):
        sel = np.flatnonzero(r[start:stop] >= 0)
        if not len(sel):
            continue
        src = r[start:stop][sel]
        kt = maps[t].shape[1]
        r_parts.append(np.repeat(sel, kt))
        c_parts.append(maps[t][src].ravel())
        v_parts.append((weights[t] * probs[t][src].astype(np.float64)).ravel())
    key = np.concatenate(r_parts).astype(np.int64) * c_union + np.concatenate(c_parts)
    uniq, inverse = np.unique(key, return_inverse=True)
    val = np.bincount(inverse, weights=np.concatenate(v_parts))
    row, cls = uniq // c_union, (uniq % c_union).astype(np.int32)
    counts = np.bincount(row, minlength=m)
    offset = np.concatenate(([0], np.cumsum(counts)[:-1]))
    width = max(int(counts.max()), k)
    pv = np.full((m, width), -1.0, np.float64)  # -1: no candidate there
    pc = np.zeros((m, width), np.int32)
    col = np.arange(len(uniq)) - offset[row]
    pv[row, col], pc[row, col] = val, cls
    top = np.argpartition(-pv, k - 1, axis=1)[:, :k] if k < width else np.tile(np.arange(width), (m, 1))[:, :k]
    vals, idx = np.take_along_axis(pv, top, 1), np.take_along_axis(pc, top, 1)
    order = np.argsort(-vals, axis=1, kind="stable")
    vals, idx = np.take_along_axis(vals, order, 1), np.take_along_axis(idx, order, 1)
    short = vals < 0
    vals[short] = 0.0
    idx[short] = np.broadcast_to(idx[:, :1], idx.shape)[short]
    return idx, vals


def kept_mass_shortfall_bound(sl: SoftLabels, teachers: list[TeacherSpec], rows: np.ndarray) -> np.ndarray:
    """(N,) upper bound on the T-mass the kept classes lack because an applicable teacher knows
    a kept class but did not store it (it was in that teacher's tail): per teacher
    min(n_missing * p_t(k-th stored), p_t's tail mass) times its effective weight. 0 where the
    kept values are exact (module doc). rows: applicable_rows(...)."""
    pos = {c: i for i, c in enumerate(sl.classes)}
    weights = np.array([t.weight for t in teachers], dtype=np.float64)
    wsum = ((rows >= 0) * weights[:, None]).sum(0)
    pad = (sl.values == 0) & (sl.indices == sl.indices[:, :1])
    pad[:, 0] = False  # padding repeats the top class with probability 0 (_combine_chunk)
    bound = np.zeros(len(sl.image_ids), np.float64)
    for t_i, t in enumerate(teachers):
        sel = np.flatnonzero(rows[t_i] >= 0)
        if not len(sel):
            continue
        tl = t.logits
        knows = np.zeros(len(sl.classes), bool)
        knows[[pos[c] for c in tl.classes]] = True
        class_map = np.array([pos[c] for c in tl.classes], dtype=np.int64)
        idx, p = topk_probs(tl, sl.temperature)
        for lo in range(0, len(sel), 1024):  # (rows, k, k_t) membership in chunks
            s_ = sel[lo : lo + 1024]
            src = rows[t_i, s_]
            kept = sl.indices[s_].astype(np.int64)
            stored = (kept[:, :, None] == class_map[idx[src]][:, None, :]).any(-1)
            n_missing = (knows[kept] & ~stored & ~pad[s_]).sum(1)
            tail = np.clip(1.0 - p[src].astype(np.float64).sum(1), 0.0, None)
            share = np.minimum(n_missing * p[src, -1].astype(np.float64), tail)
            bound[s_] += weights[t_i] / wsum[s_] * share
    return bound


def effective_weights(teachers: list[TeacherSpec], rows: np.ndarray) -> list[dict]:
    """Each distinct pattern of applicable teachers, most samples first (then most teachers):
    the teachers, their weights renormalised over the pattern (what each sample's soft label
    actually uses) and how many samples have it."""
    names = [t.logits.name or f"teacher{i}" for i, t in enumerate(teachers)]
    covered = (rows >= 0).T  # (N, teachers)
    if not len(covered):
        return []
    patterns, counts = np.unique(covered, axis=0, return_counts=True)
    table = []
    by_size = sorted(zip(patterns, counts, strict=True), key=lambda pc: (-int(pc[1]), -int(pc[0].sum())))
    for pattern, count in by_size:
        on = [i for i in range(len(teachers)) if pattern[i]]
        total = sum(teachers[i].weight for i in on)
        table.append(
            {
                "teachers": [names[i] for i in on],
                "weights": {names[i]: round(teachers[i].weight / total, 6) for i in on} if total > 0 else {},
                "samples": int(count),
            }
        )
    return table


def soft_label_metrics(sl: SoftLabels, teachers: list[TeacherSpec], sample_regions: list[str]) -> dict:
    """Samples, classes, the kept T-mass (mean, min) and the bound on what it lacks, mean entropy
    of the k + 1 bins (a lower bound on the T distribution's), teacher agreement (share of
    samples covered by 2+ teachers whose top-1 classes agree), how many samples each teacher
    covers and the effective weights per coverage pattern."""
    v = sl.values.astype(np.float64)
    bins = np.concatenate([v, np.asarray(sl.rest, np.float64)[:, None]], axis=1)
    entropy = float(-(bins * np.log(np.clip(bins, 1e-30, None))).sum(1).mean()) if len(v) else 0.0
    rows = applicable_rows(teachers, list(sl.image_ids), sample_regions)
    names = [t.logits.name or f"teacher{i}" for i, t in enumerate(teachers)]
    top1 = np.full(rows.shape, "", dtype=object)
    for t_i, t in enumerate(teachers):
        sel = np.flatnonzero(rows[t_i] >= 0)
        top1[t_i, sel] = np.asarray(t.logits.classes, dtype=object)[t.logits.indices[rows[t_i, sel], 0]]
    multi = [col[col != ""] for col in top1.T]
    multi = [m for m in multi if len(m) >= 2]
    agree = float(np.mean([len(set(m)) == 1 for m in multi])) if multi else 1.0
    kept = sl.kept_mass.astype(np.float64)
    bound = kept_mass_shortfall_bound(sl, teachers, rows)
    return {
        "samples": len(sl.image_ids),
        "classes": len(sl.classes),
        "k": int(sl.indices.shape[1]),
        "mean_entropy": entropy,
        "teacher_agreement": agree,
        "samples_with_2plus_teachers": len(multi),
        "max_row_sum_error": float(np.abs(bins.sum(1) - 1).max()) if len(bins) else 0.0,
        "topk_mass_mean": float(kept.mean()) if len(kept) else 0.0,
        "topk_mass_min": float(kept.min()) if len(kept) else 0.0,
        "kept_mass_shortfall_bound_mean": float(bound.mean()) if len(bound) else 0.0,
        "kept_mass_shortfall_bound_max": float(bound.max()) if len(bound) else 0.0,
        "coverage": {names[t_i]: int((rows[t_i] >= 0).sum()) for t_i in range(len(teachers))},
        "effective_weights": effective_weights(teachers, rows),
        "bytes_per_sample": sl.bytes_per_sample(),
    }


def run_combine(
    teacher_paths: list[tuple[str, float]], train_records: list[dict], student_cfg: dict, out_path: str, k: int = 32
) -> dict:
    """The combine step: load each teacher's logits with its weight (the pipeline's
    parameter, shared/train/teacher_set.py: one source of truth), combine at the student
    config's temperature and save. Returns metrics and the effective weights."""
    from shared.config.student import load_student_config
    from shared.data.regions import parse_regions

    cfg = load_student_config(student_cfg)
    specs = []
    for path, weight in teacher_paths:
        tl = TeacherLogits.load(path)
        specs.append(TeacherSpec(tl, float(weight), parse_regions(tl.regions)))
    ids = [r["image_id"] for r in train_records]
    regions = [r.get("region", "") for r in train_records]
    sl = combine_soft_labels(specs, ids, regions, cfg["distillation"]["temperature"], k)
    sl.records_digest = records_digest(train_records)
    sl.save(out_path)
    m = soft_label_metrics(sl, specs, regions)
    m["weights"] = {(s.logits.name or f"teacher{i}"): s.weight for i, s in enumerate(specs)}
    m["temperature"] = float(cfg["distillation"]["temperature"])
    return m
