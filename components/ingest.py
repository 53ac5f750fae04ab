"""Phase 0 ingest component: MongoDB or records JSONL -> records + audit."""
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Metrics, Output

from components.images import DATA_IMAGE


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def ingest(source: str, records_uri: str, mongo: dict, license_allow: list, min_side: int,
           snapshot_id: str, records: Output[Dataset], audit: Output[Artifact],
           rejections: Output[Dataset], metrics: Output[Metrics]):
    """Read image records, keep allowed licences, drop duplicates, audit.

    snapshot_id names the catalogue snapshot, so KFP's cache reuses a result only
    for the same snapshot."""
    from shared.ingest import run_ingest

    a = run_ingest(source, records_uri, mongo, license_allow, min_side,
                   records.path, audit.path, rejections.path)
    records.metadata.update({"snapshot_id": snapshot_id, "records": a["records_kept"]})
    for key in ("records_read", "records_valid", "records_kept", "unique_images", "classes",
                "permissive_share_of_valid"):
        metrics.log_metric(key, a[key])
    metrics.log_metric("records_dropped", a["records_read"] - a["records_kept"])
    print("ingest:", {k: a[k] for k in ("records_read", "records_kept", "classes", "dropped_by_reason")})
