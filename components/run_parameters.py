"""The run_parameters step: every pipeline parameter's value as this run was submitted, for the
training manifest (a `--param quantization=uint8` is recorded as uint8, not as the compiled
default), with the names that differ from the compiled defaults.

Its inputs are the pipeline's parameters (shared/config/pipeline_parameters.RUN_PARAMETER_NAMES:
all but those the manifest step takes itself); tests/components/test_component_specs.py keeps
the two lists equal. A KFP dict literal of pipeline channels would avoid this step, but kfp's
local runner cannot resolve one holding a dict or list parameter (kfp 2.17)."""

from kfp import dsl

from components.images import DATA_IMAGE


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def run_parameters(
    source: str,
    records_uri: str,
    mongo: dict,
    license_allow: list,
    min_side: int,
    cache_dir: str,
    resize: int,
    student_resize: int,
    max_fail_rate: float,
    fetch_policy: dict,
    cache_workers: int,
    split_seed: int,
    baseline_settings: dict,
    weights_cache: str,
    hub_endpoint: str,
    weights_offline: bool,
    global_teacher_weight: float,
    teacher_overrides: dict,
    logits_top_k: int,
    checkpoint_dir: str,
    gpus_per_teacher: int,
    gpus_per_student: int,
    train_ce_control: bool,
    ece_threshold: float,
    target_precision: float,
    calibration_objective: str,
    gate_min_val_top1: float,
    gate_max_ece: float,
    gate_min_coverage: float,
    gate_min_precision: float,
    quantization: str,
    export_images: int,
    min_parity_correlation: float,
    min_parity_agreement: float,
    weight_shard_mb: float,
    gate_max_bundle_mb: float,
    gate_max_latency_ms: float,
    latency_runtime: str,
    compiled_defaults: dict,
) -> dict:
    """Every parameter's value in this run and which differ from the compiled defaults.

    Args:
        source: The run's source.
        records_uri: The run's records_uri.
        mongo: The run's mongo.
        license_allow: The run's license_allow.
        min_side: The run's min_side.
        cache_dir: The run's cache_dir.
        resize: The run's resize.
        student_resize: The run's student_resize.
        max_fail_rate: The run's max_fail_rate.
        fetch_policy: The run's fetch_policy.
        cache_workers: The run's cache_workers.
        split_seed: The run's split_seed.
        baseline_settings: The run's baseline_settings.
        weights_cache: The run's weights_cache.
        hub_endpoint: The run's hub_endpoint.
        weights_offline: The run's weights_offline.
        global_teacher_weight: The run's global_teacher_weight.
        teacher_overrides: The run's teacher_overrides.
        logits_top_k: The run's logits_top_k.
        checkpoint_dir: The run's checkpoint_dir.
        gpus_per_teacher: The run's gpus_per_teacher.
        gpus_per_student: The run's gpus_per_student.
        train_ce_control: The run's train_ce_control.
        ece_threshold: The run's ece_threshold.
        target_precision: The run's target_precision.
        calibration_objective: The run's calibration_objective.
        gate_min_val_top1: The run's gate_min_val_top1.
        gate_max_ece: The run's gate_max_ece.
        gate_min_coverage: The run's gate_min_coverage.
        gate_min_precision: The run's gate_min_precision.
        quantization: The run's quantization.
        export_images: The run's export_images.
        min_parity_correlation: The run's min_parity_correlation.
        min_parity_agreement: The run's min_parity_agreement.
        weight_shard_mb: The run's weight_shard_mb.
        gate_max_bundle_mb: The run's gate_max_bundle_mb.
        gate_max_latency_ms: The run's gate_max_latency_ms.
        latency_runtime: The run's latency_runtime.
        compiled_defaults: The compiled defaults of the same parameters (the config's values).

    Returns:
        Output: {"values": every parameter's value, "overridden": the names whose value is not the
            compiled default}, for the training manifest's `parameters`.
    """
    from shared.config.pipeline_parameters import RUN_PARAMETER_NAMES, overridden

    given = dict(locals())
    values = {name: given[name] for name in RUN_PARAMETER_NAMES}
    return {"values": values, "overridden": overridden(values, compiled_defaults)}
