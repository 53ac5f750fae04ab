"""Phase 3: combine several teachers' sparse logits into soft labels for the student.

Teachers have different class sets: the union class space is built (sorted class
names) and every teacher is aligned to it by name. Each teacher has a weight
and optionally the regions it speaks for; a sample gets, at temperature T,

    q = sum_t w_t softmax(z_t / T) / sum_t w_t

over the teachers that apply to it (the teacher scored the sample and the
sample's region is one of the teacher's), i.e. the weights are renormalised per
sample. Averaging probabilities (not logits) is what makes teachers with
different class sets combinable. q keeps its top-k classes, renormalised to sum
to 1, stored fp16. Work is done in chunks: never a dense N x C matrix."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from shared.distill.teacher_logits import TeacherLogits, topk_probs
from shared.io.atomic import load_npz, save_npz


@dataclass
class TeacherSpec:
    logits: TeacherLogits
    weight: float
    regions: set[str] | None = None  # None: every region


@dataclass
class SoftLabels:
    image_ids: np.ndarray  # (N,) str
    indices: np.ndarray  # (N, k) int32 into classes
    values: np.ndarray  # (N, k) float16 probabilities, rows sum to 1
    classes: list[str]
    temperature: float
    records_digest: str = ""  # records_digest() of the train records they were made for

    def save(self, path: str | os.PathLike) -> None:
        save_npz(
            path,
            image_ids=np.asarray(self.image_ids, dtype=str),
            indices=self.indices.astype(np.int32),
            values=self.values.astype(np.float16),
            classes=np.asarray(self.classes, dtype=str),
            temperature=np.asarray(self.temperature, dtype=np.float32),
            records_digest=np.asarray(self.records_digest, dtype=str),
            classes_digest=np.asarray(classes_digest(self.classes), dtype=str),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> SoftLabels:
        z = load_npz(path, "soft labels")
        try:
            sl = cls(
                z["image_ids"],
                z["indices"],
                z["values"],
                [str(c) for c in z["classes"]],
                float(z["temperature"]),
                str(z["records_digest"]),
            )
            stored = str(z["classes_digest"])
        except KeyError as e:
            raise ValueError(
                f"soft labels {path} lack the array {e} (made by an older version? re-run combine_soft_labels)"
            ) from None
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
        return self.indices.shape[1] * (4 + 2)


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
    sample_pos = {s: i for i, s in enumerate(sample_ids)}
    # Per teacher: for each sample, its row in the teacher's logits (-1: not scored / not applicable).
    rows, probs, maps = [], [], []
    for t in teachers:
        tl = t.logits
        class_map = np.array([pos[c] for c in tl.classes], dtype=np.int64)
        r = np.full(n, -1, dtype=np.int64)
        for j, sid in enumerate(tl.image_ids):
            i = sample_pos.get(str(sid))
            if i is not None and (t.regions is None or sample_regions[i] in t.regions):
                r[i] = j
        idx, p = topk_probs(tl, temperature)
        rows.append(r)
        probs.append(p.astype(np.float32))
        maps.append(class_map[idx])
    weights = np.array([t.weight for t in teachers], dtype=np.float32)
    covered = np.stack([r >= 0 for r in rows])  # (T, N)
    wsum = (covered * weights[:, None]).sum(0)
    missing = np.flatnonzero(wsum <= 0)
    if len(missing):
        ex = ", ".join(str(sample_ids[i]) for i in missing[:5])
        raise ValueError(
            f"{len(missing)} samples have no applicable teacher (e.g. {ex}); the global "
            "teacher's logits must cover every train sample"
        )
    out_idx = np.zeros((n, k), np.int32)
    out_val = np.zeros((n, k), np.float16)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        out_idx[start:stop], out_val[start:stop] = _combine_chunk(rows, maps, probs, weights, start, stop, c_union, k)
    return SoftLabels(np.asarray(sample_ids, dtype=str), out_idx, out_val, classes, float(temperature))


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
    """Rows start..stop of the combined soft labels, sparsely: each row has at most
    (teachers x teacher k) candidate classes, so work and memory grow with records, never
    with records x classes. Repeated classes are summed, the top k kept (descending) and
    renormalised (which also divides out the row's weight sum)."""
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
        v_parts.append((weights[t] * probs[t][src]).ravel())
    key = np.concatenate(r_parts).astype(np.int64) * c_union + np.concatenate(c_parts)
    uniq, inverse = np.unique(key, return_inverse=True)
    val = np.bincount(inverse, weights=np.concatenate(v_parts)).astype(np.float32)
    row, cls = uniq // c_union, (uniq % c_union).astype(np.int32)
    counts = np.bincount(row, minlength=m)
    offset = np.concatenate(([0], np.cumsum(counts)[:-1]))
    width = max(int(counts.max()), k)
    pv = np.full((m, width), -1.0, np.float32)  # -1: no candidate there
    pc = np.zeros((m, width), np.int32)
    col = np.arange(len(uniq)) - offset[row]
    pv[row, col], pc[row, col] = val, cls
    top = np.argpartition(-pv, k - 1, axis=1)[:, :k] if k < width else np.tile(np.arange(width), (m, 1))[:, :k]
    vals, idx = np.take_along_axis(pv, top, 1), np.take_along_axis(pc, top, 1)
    order = np.argsort(-vals, axis=1, kind="stable")
    vals, idx = np.take_along_axis(vals, order, 1), np.take_along_axis(idx, order, 1)
    short = vals < 0  # rows with fewer than k candidates: pad with probability 0 on their top class
    vals[short] = 0.0
    idx[short] = np.broadcast_to(idx[:, :1], idx.shape)[short]
    vals /= vals.sum(axis=1, keepdims=True)
    return idx, vals.astype(np.float16)


def soft_label_metrics(sl: SoftLabels, teachers: list[TeacherSpec], sample_regions: list[str]) -> dict:
    """Samples, classes, mean entropy, teacher agreement (share of samples covered by
    2+ teachers whose top-1 classes agree) and how many samples each teacher covers."""
    v = sl.values.astype(np.float64)
    entropy = float(-(v * np.log(np.clip(v, 1e-12, None))).sum(1).mean())
    row_sums = v.sum(1)
    sample_pos = {str(s): i for i, s in enumerate(sl.image_ids)}
    top1 = np.full((len(teachers), len(sl.image_ids)), "", dtype=object)
    coverage = {}
    for t_i, t in enumerate(teachers):
        tl = t.logits
        n_cov = 0
        for j, sid in enumerate(tl.image_ids):
            i = sample_pos.get(str(sid))
            if i is not None and (t.regions is None or sample_regions[i] in t.regions):
                top1[t_i, i] = tl.classes[tl.indices[j, 0]]
                n_cov += 1
        coverage[tl.name or f"teacher{t_i}"] = n_cov
    multi = [(col[col != ""]) for col in top1.T]
    multi = [m for m in multi if len(m) >= 2]
    agree = float(np.mean([len(set(m)) == 1 for m in multi])) if multi else 1.0
    return {
        "samples": len(sl.image_ids),
        "classes": len(sl.classes),
        "k": int(sl.indices.shape[1]),
        "mean_entropy": entropy,
        "teacher_agreement": agree,
        "samples_with_2plus_teachers": len(multi),
        "max_row_sum_error": float(np.abs(row_sums - 1).max()) if len(row_sums) else 0.0,
        "coverage": coverage,
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
