"""Near-duplicate grouping of perceptual hashes (issue 22): every set of 64-bit hashes linked by
Hamming distances <= NEAR_DUPLICATE_BITS is one photo, found without comparing all pairs.

Why not all pairs: 741k images are 2.7e11 pairs. Why not the plain pigeonhole (11 bands of ~6
bits, exact match on one): 6-bit bands give buckets of ~11k random hashes each, 5e10 pairs.
Instead the 64 bits are cut into max_bits + AGREEING_BLOCKS blocks (at the default bound of 6
bits: 10 blocks of 6-7 bits); two hashes within max_bits differ in at most max_bits blocks, so
they agree exactly on at least AGREEING_BLOCKS = 4 (pigeonhole). For each of the C(10, 4) = 210
choices of 4 blocks, the hashes are sorted by those blocks' bits (24-28 bit keys, well under one
random hash a bucket at 741k) and only hashes sharing a key are compared; each candidate pair
is verified by its full Hamming distance. Every pair within the bound shares some key, so
nothing is missed (exact, not probabilistic), and the work is ~1e9 cheap vector operations.

Identical hashes collapse first (one flat image class could otherwise fill a bucket). A bucket
still larger than `max_bucket` (adversarial or degenerate hashes) is not compared: it is
counted in `skipped_buckets`, so a report can say that grouping was incomplete."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from shared.data.perceptual_hash import NEAR_DUPLICATE_BITS, PHASH_FIELD, from_hex

AGREEING_BLOCKS = 4  # blocks two hashes within the bound must share: the key is their bits
# Buckets up to this size are scanned by offset (cheap for the ~2-member buckets of real keys);
# larger ones by a blocked distance matrix.
_SCAN_OFFSETS = 32
_MATRIX_ROWS = 2048


@dataclass
class NearDuplicateGroups:
    """labels[i] is the group of hashes[i]: the smallest input index in its group."""

    labels: np.ndarray
    pairs_verified: int = 0  # candidate pairs whose distance was computed
    skipped_buckets: list[int] = field(default_factory=list)  # sizes of buckets not compared


def block_count(max_bits: int) -> int:
    """Blocks the 64 bits are cut into for a bound of max_bits (AGREEING_BLOCKS of them agree)."""
    if not 0 <= max_bits <= 64 - AGREEING_BLOCKS:
        raise ValueError(f"max_bits {max_bits}: expected 0..{64 - AGREEING_BLOCKS}")
    return max_bits + AGREEING_BLOCKS


def _blocks(max_bits: int) -> list[tuple[int, int]]:
    """(shift, width) of each block, widest first, covering the 64 bits."""
    n = block_count(max_bits)
    widths = [64 // n + (1 if i < 64 % n else 0) for i in range(n)]
    out, shift = [], 0
    for w in widths:
        out.append((shift, w))
        shift += w
    return out


def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = int(parent[i])
    return i


def _union_pairs(parent: np.ndarray, pairs: list[np.ndarray]) -> None:
    """Union every pair (a code a << 32 | b); each distinct pair once: a close pair shares a key
    in hundreds of the block choices."""
    if not pairs:
        return
    codes = np.unique(np.concatenate(pairs))
    for x, y in zip((codes >> 32).tolist(), (codes & 0xFFFFFFFF).tolist(), strict=True):
        rx, ry = _find(parent, x), _find(parent, y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)


def _close(u: np.ndarray, a: np.ndarray, b: np.ndarray, max_bits: int) -> np.ndarray:
    return np.bitwise_count(u[a] ^ u[b]) <= max_bits


def _scan_sorted(
    keys: np.ndarray, order: np.ndarray, u: np.ndarray, max_bits: int, max_bucket: int, out: NearDuplicateGroups
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Verified pairs among hashes sharing a key (keys already in sorted order)."""
    found = []
    n = len(keys)
    active = np.arange(n - 1)
    for d in range(1, _SCAN_OFFSETS + 1):
        # in sorted order a run of equal keys is contiguous: i and i+d share a key only if i and i+d-1 did
        active = active[active + d < n]
        active = active[keys[active] == keys[active + d]]
        if not len(active):
            return found
        a, b = order[active], order[active + d]
        out.pairs_verified += len(active)
        ok = _close(u, a, b, max_bits)
        if ok.any():
            found.append((a[ok], b[ok]))
    # runs longer than _SCAN_OFFSETS: the remaining pairs of those buckets by distance matrix
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    sizes = np.diff(np.r_[starts, n])
    long_runs = sizes > _SCAN_OFFSETS + 1
    for s, size in zip(starts[long_runs].tolist(), sizes[long_runs].tolist(), strict=True):
        if size > max_bucket:
            out.skipped_buckets.append(int(size))
            continue
        members = order[s : s + size]
        for r0 in range(0, size, _MATRIX_ROWS):
            rows = members[r0 : r0 + _MATRIX_ROWS]
            dist = np.bitwise_count(u[rows][:, None] ^ u[members][None, :])
            i, j = np.nonzero(dist <= max_bits)
            far = (j - (i + r0)) > _SCAN_OFFSETS  # nearer offsets were scanned above
            out.pairs_verified += dist.size
            found.append((rows[i[far]], members[j[far]]))
    return found


def near_duplicate_groups(
    hashes: Sequence[int] | np.ndarray, max_bits: int = NEAR_DUPLICATE_BITS, max_bucket: int = 20_000
) -> NearDuplicateGroups:
    """Group 64-bit hashes linked (transitively) by Hamming distance <= max_bits."""
    h = np.asarray(hashes, dtype=np.uint64).reshape(-1)
    u, inverse = np.unique(h, return_inverse=True)
    out = NearDuplicateGroups(labels=np.empty(0, dtype=np.int64))
    parent = np.arange(len(u), dtype=np.int64)
    blocks = _blocks(max_bits)
    pending: list[np.ndarray] = []
    for t, chosen in enumerate(combinations(range(len(blocks)), AGREEING_BLOCKS)):
        keys = np.zeros(len(u), dtype=np.uint64)
        for k in chosen:
            shift, width = blocks[k]
            keys = (keys << np.uint64(width)) | ((u >> np.uint64(shift)) & np.uint64((1 << width) - 1))
        if sum(blocks[k][1] for k in chosen) <= 32:  # a 32-bit sort is ~2x faster than a 64-bit one
            keys = keys.astype(np.uint32)
        order = np.argsort(keys, kind="stable")
        for a, b in _scan_sorted(keys[order], order, u, max_bits, max_bucket, out):
            lo, hi = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
            pending.append((lo << 32) | hi)
        if t % 64 == 63:  # bound the memory of repeated pairs
            pending = [np.unique(np.concatenate(pending))] if pending else []
    _union_pairs(parent, pending)
    roots = np.array([_find(parent, i) for i in range(len(u))], dtype=np.int64)
    # label each input by the smallest input index of its group (stable, order-independent ids)
    group_of = roots[inverse.reshape(-1)]
    first = np.full(len(u), len(h), dtype=np.int64)
    np.minimum.at(first, group_of, np.arange(len(h), dtype=np.int64))
    out.labels = first[group_of]
    return out


@dataclass
class RecordNearDuplicates:
    """Near-duplicate photos among records: group[i] is record i's group (an index into the
    records) or None when it has no usable phash (older caches: grouped as before)."""

    group: list[int | None]
    stats: dict


def record_near_duplicates(records: Sequence[dict], max_bits: int = NEAR_DUPLICATE_BITS) -> RecordNearDuplicates:
    """Group records by their phash (PHASH_FIELD); stats count the groups of two or more records,
    with examples, and the records without a phash or with an invalid one."""
    idx, values, invalid = [], [], []
    for i, r in enumerate(records):
        text = r.get(PHASH_FIELD)
        if text is None or text == "":
            continue
        try:
            values.append(from_hex(text))
            idx.append(i)
        except ValueError:  # a damaged value must not link unrelated photos: that record is left out
            invalid.append(str(r.get("image_id")))
    found = near_duplicate_groups(values, max_bits)
    group: list[int | None] = [None] * len(records)
    members: dict[int, list[int]] = {}
    for i, label in zip(idx, found.labels.tolist(), strict=True):
        group[i] = idx[label]
        members.setdefault(idx[label], []).append(i)
    multi = [m for m in members.values() if len(m) > 1]
    stats = {
        "max_bits": max_bits,
        "records_with_phash": len(idx),
        "records_without_phash": len(records) - len(idx) - len(invalid),
        "invalid_phash": len(invalid),
        "invalid_phash_examples": invalid[:10],
        "groups": len(multi),
        "records_in_groups": sum(len(m) for m in multi),
        "examples": [[_brief(records[i]) for i in m[:5]] for m in multi[:10]],
        "pairs_verified": found.pairs_verified,
        "skipped_buckets": found.skipped_buckets[:20],
    }
    return RecordNearDuplicates(group, stats)


def _brief(r: dict) -> dict:
    return {k: r.get(k) for k in ("image_id", "taxon", PHASH_FIELD)}


def label_conflicts(records: Sequence[dict], nd: RecordNearDuplicates) -> dict[int, list[dict]]:
    """group -> its records, for near-duplicate groups under more than one species: one photo,
    two names, and which is right is for a curator (as for identical bytes in cache_images)."""
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(nd.group):
        if g is not None:
            by_group.setdefault(g, []).append(i)
    return {
        g: [_brief(records[i]) for i in m]
        for g, m in by_group.items()
        if len({str(records[i].get("taxon")) for i in m}) > 1
    }
