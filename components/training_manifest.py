"""Phase 7 component: TRAINING_MANIFEST.yaml from every phase's outputs.

Every artifact input is optional: the step runs after any upstream failure (on the cluster
through PipelineTask.ignore_upstream_failure(); locally run_local calls it on whatever
outputs exist), and a phase without its inputs is recorded as not run, with where and why
the run failed. The export (under the quality gates' dsl.If) arrives as one parameter,
export_summary, through dsl.OneOf over the If/Else."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Metrics, Model, Output

from components.images import DATA_IMAGE


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def training_manifest(
    seed: int,
    git_commit: str,
    snapshot_id: str,
    global_teacher_config: dict,
    regional_teachers: list,
    student_config: dict,
    pipeline_settings: dict,
    manifest: Output[Artifact],
    summary: Output[Markdown],
    run_summary: Output[Metrics],
    ingest_audit: Input[Artifact] = None,
    split_stats: Input[Artifact] = None,
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
    export_summary: dict = {},
    release_summary: dict = {},
    global_teacher_weights: Input[Model] = None,
    student_weights: Input[Model] = None,
    baseline_weights: Input[Model] = None,
    failure: dict = {},  # noqa: B006 (a KFP parameter default: a constant in the spec)
    run_parameters: dict = {},  # noqa: B006
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
        export_summary: The export's figures as a parameter (uri, model_size_mb, quantization,
            correlation, max_abs_diff, top1_agreement, passed) or {"status": "skipped", "reason": ...},
            through dsl.OneOf over the gates' If/Else, which the local runner supports for parameters
            but not for artifacts (kfp 2.17); no artifact inputs for the export, as every input must
            be passed for ignore_upstream_failure() and a constant None is refused.
        release_summary: The publish step's result (decision, both models' figures, version) or
            {"status": "skipped", "reason": ...} when not blessed, through dsl.OneOf like export_summary;
            {} when it did not run. Recorded under the manifest's `release`.
        global_teacher_weights: The global teacher's staged pretrained weights (stage_weights).
        student_weights: The student's staged pretrained weights (stage_weights).
        baseline_weights: The baseline's staged pretrained weights (stage_weights).
        failure: {"task", "error", "phase"} of the task that failed, when the caller knows it (the
            local runner); {} lets the manifest name the first phase left without a result.
        run_parameters: The run's parameters as submitted (run_parameters: {"values", "overridden"}),
            recorded under the manifest's `parameters`.

    Returns:
        manifest: A directory holding TRAINING_MANIFEST.yaml; its metadata carries the commit, the
            timestamp, the run's status (and failed task), the gate's bounds, blessed, whether the
            plan's criteria were met and each phase's status.
        summary: The run's figures as a table (Markdown) to compare runs, under the verdict lines.
        run_summary: The run's headline figures under stable keys, one row per run in KFP's compare
            page (shared/manifest/run_summary.py): run_completed, plan_criteria_met and blessed
            (1/0), the baseline's, teachers' (teacher_<name>_test_top1, _top1_own_regions,
            _min_gain_vs_global), student's, calibration's and export's figures, release_published
            (1/0); absent when a phase did not produce them.
    """
    from shared.manifest import training_manifest as tm
    from shared.manifest.run_summary import run_summary_metrics

    m = tm.build_training_manifest(
        config={
            "global_teacher": global_teacher_config,
            "regional_teachers": regional_teachers,
            "student": student_config,
            "pipeline": pipeline_settings,
        },
        phase_results=tm.collect_phase_results(
            baseline_report=baseline_report,
            global_teacher_results=global_teacher_results,
            global_teacher_model=global_teacher_model,
            regional_teacher_results=regional_teacher_results,
            regional_teacher_models=regional_teacher_models,
            soft_labels=soft_labels,
            student_model=student_model,
            student_metrics=student_metrics,
            calibration=calibration,
            export_summary=export_summary,
        ),
        data_stats=tm.collect_data_stats(snapshot_id, ingest_audit, split_stats, cache_report),
        seed=seed,
        git_commit=git_commit or tm.git_commit(),
        # The training and export images report their own versions in their artifacts' metadata.
        environment=tm.collect_environment(training=global_teacher_model, student_training=student_model),
        staged_weights=tm.collect_staged_weights(
            global_teacher=global_teacher_weights, student=student_weights, baseline=baseline_weights
        ),
        failure=failure or None,
        run_parameters=run_parameters or None,
        release=release_summary or None,
    )
    meta = tm.write_training_manifest(manifest.path, summary.path, m)
    manifest.metadata.update(meta)
    for key, value in run_summary_metrics(m).items():
        run_summary.log_metric(key, value)
