"""Phase 0 ingest component: MongoDB or records JSONL -> records + audit."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Metrics, Output

from components.images import DATA_IMAGE


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def ingest(
    source: str,
    records_uri: str,
    mongo: dict,
    license_allow: list,
    min_side: int,
    snapshot_id: str,
    checks: dict,
    records: Output[Dataset],
    audit: Output[Artifact],
    rejections: Output[Dataset],
    metrics: Output[Metrics],
):
    """Read image records, keep allowed licences, drop duplicates, audit.

    Args:
        source: Where records come from: "jsonl" (records_uri) or "mongo" (the `mongo` settings).
        records_uri: The records JSONL (a path, gs:// or http(s) URL) when source is "jsonl".
        mongo: The config's data.mongo section (uri_env, database, collection, query, field_map, limit).
        license_allow: The licences kept (e.g. CC0, CC-BY, CC-BY-SA); any other is dropped.
        min_side: Records whose image is known to be smaller than this (pixels, short side) are dropped.
        snapshot_id: Names the catalogue snapshot, so KFP's cache reuses a result only for the same
            snapshot.
        checks: Data-quality settings (shared.config.pipeline.ingest_checks): max_line_bytes,
            placeholder_observation_ids, max_records_per_observation, unknown_regions (warn | fail)
            and known_regions (data.known_regions plus the regional teachers' regions).

    Returns:
        records: The kept records (JSONL); its metadata carries snapshot_id and the count.
        audit: Records read, valid and kept, per licence and region, class sizes, drops by reason,
            regions normalised and unknown, observation ids not used for grouping (JSON).
        rejections: Every dropped record with its reason (JSONL).
        metrics: Records read, valid, kept and dropped, unique images, classes, permissive share.
    """
    from shared import artifact_keys as K
    from shared.data.ingest import run_ingest

    a = run_ingest(
        source, records_uri, mongo, license_allow, min_side, records.path, audit.path, rejections.path, checks=checks
    )
    records.metadata.update({K.SNAPSHOT_ID: snapshot_id, K.RECORDS: a["records_kept"]})
    for key in K.INGEST_METRICS:
        metrics.log_metric(key, a[key])
    metrics.log_metric(K.RECORDS_DROPPED, a["records_read"] - a["records_kept"])
    print("ingest:", {k: a[k] for k in ("records_read", "records_kept", "classes", "dropped_by_reason")})
