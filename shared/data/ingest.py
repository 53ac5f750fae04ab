"""Phase 0 ingestion: read image records from MongoDB or a records JSONL, map
field names, validate (species names normalised, see shared/io/records.py), keep only
allowed licences, drop exact duplicates, and audit the result. A bad record is
counted and reported by reason and line (a line that is not UTF-8 also by byte
offset), never fatal on its own; a run that keeps no record at all fails with
NothingKeptError naming how many were read and the reasons that dominated.

Catalogue data as it really comes (issue 22, settings in `checks`, DEFAULT_CHECKS): a JSONL
line over `max_line_bytes` is rejected (`line_too_long`, line and byte offset) without being
read into memory; regions are normalised like species names (regions.normalize_region, the
catalogue's value kept in `region_raw`) and one that no teacher and no configured list names
is reported (`unknown_regions`: warn, or fail the run naming it); observation ids that are
placeholders, shared by species or on too many records are not used for grouping
(observations.clear_unreliable_observations)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from shared.data.licenses import DEFAULT_ALLOWED, allowed_set, parse_license
from shared.data.observations import DEFAULT_PLACEHOLDERS, clear_unreliable_observations
from shared.data.regions import normalize_region
from shared.io import gcs
from shared.io.records import LineTooLongError, NotUtf8Error, Record, RecordError, parse_record, read_jsonl

# Map from our field names to the catalogue's (dotted paths reach into sub-documents).
DEFAULT_FIELD_MAP = {
    "image_id": "image_id",
    "image_url": "image_url",
    "taxon": "taxon",
    "region": "region",
    "license": "license",
    "observation_id": "observation_id",
    "source": "source",
    "width": "width",
    "height": "height",
}

# The data-quality settings (config data.*; the ingest component's `checks` input).
DEFAULT_CHECKS: dict[str, Any] = {
    "max_line_bytes": 1_000_000,
    "placeholder_observation_ids": list(DEFAULT_PLACEHOLDERS),
    "max_records_per_observation": 50,
    "unknown_regions": "warn",  # warn | fail
    "known_regions": [],  # regions teachers and data.known_regions name; [] = no check
}


class UnknownRegionError(ValueError):
    """Records name a region no teacher and no configured list knows (data.unknown_regions: fail)."""


# What to check first when a reason empties a whole run.
_HINTS = {
    "not_utf8": "is the file in another encoding (Latin-1, UTF-16)? convert it to UTF-8",
    "invalid_json": "is it JSON Lines, one object a line?",
    "license_not_allowed": "check data.license_allow",
    "missing_field": "check the field names (data.mongo.field_map for MongoDB)",
    "too_small": "check data.min_side",
}


@dataclass
class Rejection:
    locator: str  # "file.jsonl:12" or "mongo:_id=..."
    reason: str
    field: str
    detail: str = ""
    byte_offset: int | None = None  # of the first bad byte in the file (not_utf8)

    def to_dict(self) -> dict:
        d = {"locator": self.locator, "reason": self.reason, "field": self.field, "detail": self.detail}
        if self.byte_offset is not None:
            d["byte_offset"] = self.byte_offset
        return d


@dataclass
class IngestResult:
    records: list[Record]
    rejections: list[Rejection]
    audit: dict[str, Any] = field(default_factory=dict)


class IngestError(ValueError):
    """The ingest step cannot produce a usable records file."""


class NothingKeptError(IngestError):
    """Every record was rejected (or none was read). `result` holds the full account
    (rejections, audit) so the step can still write it for inspection."""

    def __init__(self, result: IngestResult):
        self.result = result
        read = result.audit.get("records_read", 0)
        if not read:
            msg = (
                "ingest kept no records: the source is empty (0 records read; "
                "check the records file or the Mongo query)"
            )
        else:
            by = Counter(r.reason for r in result.rejections)
            first: dict[str, Rejection] = {}
            for r in result.rejections:
                first.setdefault(r.reason, r)
            parts: list[str] = []
            for reason, count in by.most_common(3):
                ex = first[reason]
                detail = ex.detail.removeprefix(f"{reason}: field '{ex.field}' ")[:160]
                hint = f"; hint: {_HINTS[reason]}" if reason in _HINTS else ""
                parts.append(f"{reason}={count} (e.g. {ex.locator} field '{ex.field}': {detail}{hint})")
            more = f"; {len(by) - 3} other reason(s)" if len(by) > 3 else ""
            msg = (
                f"ingest kept no records: all {read} records read were rejected; top reasons: {'; '.join(parts)}{more}"
            )
        super().__init__(msg)


def _get_path(doc: dict, dotted: str) -> Any:
    cur: Any = doc
    for part in dotted.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return None
    return cur


def map_fields(doc: dict, field_map: dict[str, str] | None) -> dict:
    """Rename a catalogue document's fields to the record schema."""
    fm = {**DEFAULT_FIELD_MAP, **(field_map or {})}
    unknown = set(fm) - set(DEFAULT_FIELD_MAP)
    if unknown:
        raise ValueError(f"field_map: unknown record field(s) {sorted(unknown)}; known: {sorted(DEFAULT_FIELD_MAP)}")
    out = {}
    for ours, theirs in fm.items():
        v = _get_path(doc, theirs)
        if v is not None:
            out[ours] = str(v) if ours in ("image_id", "observation_id") and not isinstance(v, str) else v
    return out


def iter_jsonl_source(
    path: str | os.PathLike, field_map: dict | None = None, max_line_bytes: int | None = None
) -> Iterator[tuple[str, Any]]:
    """Yield (locator, mapped raw record or an Exception) from a JSONL file."""
    name = os.path.basename(str(path))
    for n, obj in read_jsonl(path, max_line_bytes):
        loc = f"{name}:{n}"
        if isinstance(obj, LineTooLongError):
            yield loc, RecordError("line_too_long", "<line>", str(obj), byte_offset=obj.byte_offset)
        elif isinstance(obj, NotUtf8Error):
            yield loc, RecordError("not_utf8", "<line>", str(obj), byte_offset=obj.byte_offset)
        elif isinstance(obj, Exception):
            yield loc, RecordError("invalid_json", "<line>", str(obj))
        elif not isinstance(obj, dict):
            yield loc, RecordError("not_an_object", "<record>", type(obj).__name__)
        else:
            yield loc, map_fields(obj, field_map)


def iter_mongo_source(
    collection: Any, query: dict | None = None, field_map: dict | None = None, limit: int = 0, batch_size: int = 1000
) -> Iterator[tuple[str, Any]]:
    """Yield (locator, mapped raw record) from a pymongo (or mongomock) collection."""
    cursor = collection.find(query or {}, batch_size=batch_size).sort("_id", 1)
    if limit:
        cursor = cursor.limit(limit)
    for doc in cursor:
        loc = f"mongo:_id={doc.get('_id')}"
        if "image_id" not in (field_map or {}) and "image_id" not in doc:
            doc = {**doc, "image_id": str(doc.get("_id"))}
        yield loc, map_fields(doc, field_map)


def mongo_collection(uri_env: str, database: str, collection: str, timeout_ms: int = 20000) -> Any:
    """Open a collection with a URI read from an environment variable (a K8s secret)."""
    uri = os.environ.get(uri_env)
    if not uri:
        raise RuntimeError(
            f"MongoDB URI not set: environment variable {uri_env} is empty "
            "(on the cluster it comes from a Kubernetes Secret)"
        )
    import pymongo

    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=timeout_ms)
    return client[database][collection]


def _normalise_region(rec: Record, loc: str) -> Rejection | None:
    """The record's region in canonical form (the catalogue's kept in region_raw), or why not."""
    region = normalize_region(rec.region)
    if not region:
        return Rejection(loc, "missing_field", "region", "nothing left once invisible characters are removed")
    if region != rec.region:
        rec.extra.setdefault("region_raw", rec.region)
        rec.region = region
    return None


def ingest(
    source: Iterable[tuple[str, Any]],
    allowed_licenses: Iterable[str] | None = DEFAULT_ALLOWED,
    min_side: int = 0,
    checks: dict | None = None,
) -> IngestResult:
    """Validate, licence-filter and de-duplicate records from a source iterator.

    Raises NothingKeptError when no record is kept: an empty records file would only
    fail later, in split, with a message that says nothing about why."""
    allowed = allowed_set(allowed_licenses)
    kept: list[Record] = []
    rejections: list[Rejection] = []
    seen_ids: set[str] = set()
    seen_urls: set[str] = set()
    read = 0
    license_counts_all: Counter = Counter()
    for loc, raw in source:
        read += 1
        if isinstance(raw, RecordError):
            rejections.append(Rejection(loc, raw.reason, raw.field, str(raw), raw.byte_offset))
            continue
        try:
            rec = parse_record(raw)
        except RecordError as e:
            rejections.append(Rejection(loc, e.reason, e.field, str(e)))
            continue
        bad_region = _normalise_region(rec, loc)
        if bad_region:
            rejections.append(bad_region)
            continue
        lic = parse_license(rec.license)
        canon = lic.family
        license_counts_all[canon] += 1
        if canon not in allowed:
            why = f": {lic.reason}" if lic.reason else ""
            rejections.append(
                Rejection(
                    loc, "license_not_allowed", "license", f"{rec.license!r} ({canon}{why}) not in {sorted(allowed)}"
                )
            )
            continue
        if min_side and rec.width and rec.height and min(rec.width, rec.height) < min_side:
            rejections.append(Rejection(loc, "too_small", "width", f"{rec.width}x{rec.height} < {min_side}px"))
            continue
        if rec.image_id in seen_ids:
            rejections.append(Rejection(loc, "duplicate_image_id", "image_id", rec.image_id))
            continue
        if rec.image_url in seen_urls:
            rejections.append(Rejection(loc, "duplicate_image_url", "image_url", rec.image_url))
            continue
        seen_ids.add(rec.image_id)
        seen_urls.add(rec.image_url)
        rec.extra["license_family"] = canon
        kept.append(rec)
    ck = {**DEFAULT_CHECKS, **(checks or {})}
    observations = clear_unreliable_observations(
        kept, ck["placeholder_observation_ids"], int(ck["max_records_per_observation"])
    )
    result = IngestResult(kept, rejections, audit_records(kept, rejections, read, license_counts_all))
    result.audit["observation_ids_not_grouped"] = observations
    result.audit.update(_region_audit(kept, ck["known_regions"]))
    if not kept:
        raise NothingKeptError(result)
    return result


def _region_audit(kept: list[Record], known_regions: Iterable[str]) -> dict[str, Any]:
    """Regions rewritten to canonical form (with examples) and regions no list names."""
    known = {normalize_region(r) for r in known_regions or []} - {""}
    rewritten = {r.extra["region_raw"]: r.region for r in kept if "region_raw" in r.extra}
    unknown = Counter(r.region for r in kept if known and r.region not in known)
    return {
        "records_region_normalised": sum(1 for r in kept if "region_raw" in r.extra),
        "region_normalised_examples": dict(list(rewritten.items())[:10]),
        "known_regions": sorted(known),
        "unknown_regions": dict(sorted(unknown.items())),
    }


def check_unknown_regions(audit: dict[str, Any], policy: str) -> None:
    """data.unknown_regions: 'fail' raises UnknownRegionError naming each unknown region."""
    if policy not in ("warn", "fail"):
        raise ValueError(f"data.unknown_regions: warn or fail, got {policy!r}")
    unknown = audit.get("unknown_regions") or {}
    if unknown and policy == "fail":
        named = ", ".join(f"{r!r} ({n} records)" for r, n in unknown.items())
        raise UnknownRegionError(
            f"ingest: region(s) {named} named by no teacher (teachers.regional[].regions) and not in "
            f"data.known_regions {audit.get('known_regions')}; add them, or set data.unknown_regions: warn"
        )


def audit_records(
    kept: list[Record], rejections: list[Rejection], read: int, license_counts_all: Counter
) -> dict[str, Any]:
    """The phase-0 audit: totals, classes, per-region/licence counts, drops by reason."""
    per_class = Counter(r.taxon for r in kept)
    valid = sum(license_counts_all.values())
    permissive = sum(c for lic, c in license_counts_all.items() if lic in allowed_set(DEFAULT_ALLOWED))
    sizes = sorted(per_class.values())
    renamed = [r for r in kept if r.taxon_raw is not None]
    return {
        "records_read": read,
        "records_valid": valid,
        "records_kept": len(kept),
        "unique_images": len({r.image_url for r in kept}),
        "classes": len(per_class),
        "classes_with_1_image": sum(1 for v in sizes if v == 1),
        "classes_with_2_images": sum(1 for v in sizes if v == 2),
        "images_per_class_median": sizes[len(sizes) // 2] if sizes else 0,
        "per_region": dict(sorted(Counter(r.region for r in kept).items())),
        "per_license_all_valid": dict(sorted(license_counts_all.items())),
        "per_license_kept": dict(sorted(Counter(r.extra.get("license_family", "") for r in kept).items())),
        "permissive_share_of_valid": round(permissive / valid, 4) if valid else 0.0,
        "dropped_by_reason": dict(sorted(Counter(r.reason for r in rejections).items())),
        "dropped_by_field": dict(sorted(Counter(f"{r.reason}:{r.field}" for r in rejections).items())),
        # species names rewritten to their canonical form (records.normalize_taxon), with examples
        "records_taxon_normalised": len(renamed),
        "taxon_normalised_examples": dict(list({r.taxon_raw: r.taxon for r in renamed}.items())[:10]),
    }


def summarize_rejections(rejections: list[Rejection], limit: int = 10) -> str:
    c = Counter(r.reason for r in rejections)
    head = ", ".join(f"{k}={v}" for k, v in c.most_common())
    examples = "; ".join(f"{r.locator} {r.reason} ({r.field})" for r in rejections[:limit])
    return f"{len(rejections)} rejected [{head}] e.g. {examples}" if rejections else "0 rejected"


def dumps_rejections(rejections: list[Rejection]) -> Iterator[str]:
    for r in rejections:
        yield json.dumps(r.to_dict(), ensure_ascii=False)


def fetch_records_file(uri: str, workdir: str | os.PathLike) -> str:
    """A records JSONL given as a local path, file:// or gs:// URI -> local path."""
    if gcs.is_gs_uri(uri):
        from google.api_core import exceptions as gexc

        bucket, blob = gcs.parse_gs_uri(uri)
        local = os.path.join(str(workdir), os.path.basename(blob) or "records.jsonl")
        try:
            gcs.client().bucket(bucket).blob(blob).download_to_filename(local)
        except gexc.NotFound:
            raise FileNotFoundError(f"records file not found: {uri}") from None
        except gexc.GoogleAPICallError as e:
            raise OSError(f"cannot read the records file {uri}: {e}") from None
        return local
    path = uri[7:] if uri.startswith("file://") else uri
    if not os.path.isfile(path):
        raise FileNotFoundError(f"records file not found: {uri}")
    return path


def run_ingest(
    source: str,
    records_uri: str,
    mongo: dict | None,
    license_allow: list[str] | None,
    min_side: int,
    out_records: str,
    out_audit: str,
    out_rejections: str,
    workdir: str = "/tmp",
    checks: dict | None = None,
) -> dict[str, Any]:
    """The ingest step: read from `source` ('jsonl' or 'mongo'), write records,
    audit JSON and rejections JSONL; return the audit. When no record is kept, the
    audit and rejections are still written, then NothingKeptError is raised."""
    from shared.io.atomic import atomic_open, write_json
    from shared.io.records import write_jsonl

    ck = {**DEFAULT_CHECKS, **(checks or {})}
    if source == "jsonl":
        it = iter_jsonl_source(fetch_records_file(records_uri, workdir), None, int(ck["max_line_bytes"]) or None)
    elif source == "mongo":
        m = dict(mongo or {})
        unknown = set(m) - {"uri_env", "database", "collection", "query", "field_map", "limit"}
        if unknown:
            raise ValueError(f"data.mongo: unknown key(s) {sorted(unknown)}")
        for key in ("database", "collection"):
            if not m.get(key):
                raise ValueError(f"data.mongo.{key} is required for source 'mongo'")
        coll = mongo_collection(m.get("uri_env", "MONGO_URI"), m["database"], m["collection"])
        it = iter_mongo_source(coll, m.get("query") or {}, m.get("field_map"), int(m.get("limit") or 0))
    else:
        raise ValueError(f"data.source must be 'jsonl' or 'mongo', got {source!r}")
    failed: NothingKeptError | None = None
    try:
        result = ingest(it, license_allow, min_side, ck)
    except NothingKeptError as e:
        failed, result = e, e.result
    if failed is None:  # no records file when nothing was kept: no later step may read an empty one
        write_jsonl(out_records, result.records)
    # the rejections and audit are written either way: they say why nothing was kept
    with atomic_open(out_rejections, "w", encoding="utf-8") as f:
        for line in dumps_rejections(result.rejections):
            f.write(line + "\n")
    result.audit["source"] = source
    write_json(out_audit, result.audit)
    if failed is not None:
        raise failed
    check_unknown_regions(result.audit, ck["unknown_regions"])
    return result.audit
