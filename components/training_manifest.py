"""Phase 7 component: TRAINING_MANIFEST.yaml from every phase's outputs.

Inputs of steps that may not have run are optional: the export bundle and its
validation (under the quality gates' dsl.If; pass them with dsl.OneOf over an
If/Else, or leave them out) and, for partial pipelines, the later phases."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Metrics, Model, Output

from components.images import DATA_IMAGE


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def training_manifest(
    seed: int, git_commit: str, snapshot_id: str,
    global_teacher_config: dict, regional_teachers: list, student_config: dict, pipeline_settings: dict,
    ingest_audit: Input[Artifact], split_stats: Input[Artifact], manifest: Output[Artifact], summary: Output[Markdown],
    cache_report: Input[Artifact] = None,
    baseline_report: Input[Artifact] = None,
    global_teacher_results: Input[Artifact] = None,
    global_teacher_model: Input[Model] = None,
    regional_teacher_results: Input[list[Artifact]] = None,
    regional_teacher_models: Input[list[Model]] = None,
    soft_labels: Input[Artifact] = None,
    student_model: Input[Model] = None,
    student_metrics: Input[Metrics] = None,
    calibration: Input[Artifact] = None,
    export_bundle: Input[Artifact] = None,
    export_validation: Input[Artifact] = None,
    export_summary: dict = {},
    global_teacher_weights: Input[Model] = None,
    student_weights: Input[Model] = None,
    baseline_weights: Input[Model] = None,
):
    """Write the reproducibility manifest (plan 7.1); absent phases are 'skipped' with the reason.

    Args:
        seed: The pipeline's seed.
        git_commit: The code's commit; "" reads GIT_COMMIT (baked into the images) or the checkout.
        snapshot_id: The catalogue snapshot the data came from.
        global_teacher_config: The global teacher's config, as trained.
        regional_teachers: The regional teachers (name, regions, config, weight), as trained.
        student_config: The student config, as trained.
        pipeline_settings: The pipeline config's data, cache, split, calibration, export and weights sections.
        ingest_audit: The ingest audit (ingest).
        split_stats: The split's counts and leakage check (split).
        cache_report: The cache report (cache_images).
        baseline_report: The baseline's figures (baseline).
        global_teacher_results: The global teacher's test figures (evaluate_teacher).
        global_teacher_model: The global teacher checkpoint (its uri and model name are recorded).
        regional_teacher_results: Every regional teacher's test figures (collected).
        regional_teacher_models: Every regional teacher checkpoint (collected).
        soft_labels: The combined soft labels (combine_soft_labels).
        student_model: The student checkpoint (train_student).
        student_metrics: The student's metrics (train_student).
        calibration: calibration.json with the gate table (calibrate).
        export_bundle: The TF.js bundle (export_tfjs), when passed as an artifact.
        export_validation: The export validation report (validate_export), when passed as an artifact.
        export_summary: The export's figures as a parameter (uri, model_size_mb, quantization,
            correlation, max_abs_diff, top1_agreement, passed) or {"status": "skipped", "reason": ...};
            it stands in for export_bundle / export_validation, e.g. through dsl.OneOf over the gates'
            If/Else, which the local runner supports for parameters but not for artifacts (kfp 2.17).
        global_teacher_weights: The global teacher's staged pretrained weights (stage_weights).
        student_weights: The student's staged pretrained weights (stage_weights).
        baseline_weights: The baseline's staged pretrained weights (stage_weights).

    Returns:
        manifest: A directory holding TRAINING_MANIFEST.yaml; its metadata carries the commit, the
            timestamp and each phase's status.
        summary: The run's figures as a table (Markdown) to compare runs.
    """
    import json
    import os

    from shared import training_manifest as tm

    def result(art, uri_key="uri"):
        if art is None:
            return None
        r = tm.read_result(art.path, dict(art.metadata or {}))
        if r is not None:
            r[uri_key] = art.uri
        return r

    def load(art):
        return json.loads(open(art.path).read()) if art is not None else {}

    global_result = result(global_teacher_results)
    if global_result is not None and global_teacher_model is not None:
        global_result["checkpoint"] = global_teacher_model.uri
        global_result.setdefault("model_name", global_teacher_model.metadata.get("model_name"))
    regional = None
    if regional_teacher_results:
        models = {m.metadata.get("teacher"): m for m in (regional_teacher_models or [])}
        regional = []
        for art in regional_teacher_results:
            r = result(art)
            m = models.get(r.get("teacher"))
            if m is not None:
                r["checkpoint"] = m.uri
                r.setdefault("model_name", m.metadata.get("model_name"))
            regional.append(r)
    student = None
    if student_model is not None:
        student = {**dict(student_model.metadata or {}),
                   **(dict(student_metrics.metadata or {}) if student_metrics is not None else {}),
                   "checkpoint": student_model.uri}
    phase_results = {
        "baseline": result(baseline_report), "global_teacher": global_result,
        "regional_teachers": regional, "soft_labels": result(soft_labels), "student": student,
        "calibration": result(calibration), "export": result(export_bundle),
        "export_validation": result(export_validation)}
    if export_summary and export_bundle is None:
        phase_results["export"] = dict(export_summary)
        if export_validation is None and export_summary.get("status") not in ("skipped", "failed"):
            phase_results["export_validation"] = dict(export_summary)
    data_stats = {"snapshot_id": snapshot_id, "ingest": load(ingest_audit), "split": load(split_stats),
                  "cache": load(cache_report)}
    from shared.pretrained import read_staged

    staged = {role: read_staged(art.path) for role, art in (
        ("global_teacher", global_teacher_weights), ("student", student_weights), ("baseline", baseline_weights))
        if art is not None}
    env = tm.environment_versions()
    # The training and export images report their own versions in their artifacts' metadata.
    for key, art in (("training", global_teacher_model), ("student_training", student_model),
                     ("export", export_bundle)):
        if art is not None and isinstance(art.metadata.get("environment"), dict):
            env[key] = art.metadata["environment"]
    m = tm.build_training_manifest(
        config={"global_teacher": global_teacher_config, "regional_teachers": regional_teachers,
                "student": student_config, "pipeline": pipeline_settings},
        phase_results=phase_results, data_stats=data_stats, seed=seed,
        git_commit=git_commit or tm.git_commit(), environment=env, staged_weights=staged)
    # A directory holding TRAINING_MANIFEST.yaml, so the file keeps its name when downloaded.
    os.makedirs(manifest.path, exist_ok=True)
    tm.write_manifest(os.path.join(manifest.path, tm.MANIFEST_NAME), m)
    from shared.atomic import write_text

    write_text(summary.path, tm.summary_markdown(m))  # the table a team compares across runs (KFP renders it)
    statuses = {k: v["status"] for k, v in m["phases"].items()}
    manifest.metadata.update({"git_commit": m["git_commit"] or "", "timestamp": m["timestamp"], **statuses})
    print("training manifest:", statuses)
