"""The names steps use to talk to each other: artifact metadata keys and KFP metric names,
each defined once (as TFX keeps standard_component_specs.py and the evaluator's constants.py).

A producer (the component that sets the metadata or logs the metric, or the library function
whose dict a component logs as is) and its consumers (the steps and tools that read it back)
import the same constant, so a rename cannot break one side silently. Each comment says who
produces the name -> who reads it back ("UI": only shown in the KFP UI).

Metric names are user-visible in the KFP UI and compared across runs: never change a value
here, only add names. Components import this module inside their function bodies (only the
function's source runs in the container)."""

from __future__ import annotations

# ---- artifact metadata keys ---------------------------------------------------------------

TEACHER = "teacher"  # train_teacher (model), evaluate_teacher (results), teacher_logits (logits) -> training_manifest
REGIONS = "regions"  # split / regional_split (datasets), train_teacher (model), teacher_logits (logits) -> UI
WEIGHT = "weight"  # teacher_logits (logits: the teacher's weight in the mix) -> combine_soft_labels
WEIGHTS = "weights"  # combine_soft_labels (teacher weights), baseline (weights used) -> training_manifest
MODEL_NAME = "model_name"  # baseline (report), train_teacher, train_student (model) -> training_manifest
CLASSES = "classes"  # split (datasets), train_teacher, train_student (model), combine_soft_labels -> manifest;
#                      also a metric of ingest, teacher_logits and combine_soft_labels
IMAGES = "images"  # split (datasets), cache_images (cached) -> UI
SAMPLES = "samples"  # combine_soft_labels (metadata and metric), teacher_logits (metric) -> manifest, run_console
TEMPERATURE = "temperature"  # combine_soft_labels (metadata and metric), calibrate (metric) -> manifest, run_console
ENVIRONMENT = "environment"  # train_teacher, train_student (model: the training image's versions) -> manifest
IMAGE_SIZE = "image_size"  # train_student (model) -> UI
FINAL_STAGE = "final_stage"  # train_student (model: the stage shipped) -> training_manifest
SHIP_RULE = "ship_rule"  # train_student (model: training.ship in words) -> training_manifest
STOP_REASON = "stop_reason"  # train_teacher, train_student (model: why training ended) -> training_manifest
BATCH_PLAN = "batch_plan"  # train_teacher, train_student (model: batch and lr vs the plan's) -> training_manifest
DETERMINISM = "determinism"  # train_teacher, train_student (model: deterministic mode, ops alerted) -> manifest
PRETRAINED_PREFIX = "pretrained_"  # train_teacher, train_student (model): pretrained_<staged summary field> -> UI
VERSUS_PLAN = "versus_plan"  # baseline (report) -> UI
SNAPSHOT_ID = "snapshot_id"  # ingest (records) -> UI
RECORDS = "records"  # ingest (records: how many kept) -> UI
CACHE_DIR = "cache_dir"  # cache_images (cached) -> UI
STUDENT_RESIZE = "student_resize"  # cache_images (cached) -> UI
BLESSED = "blessed"  # calibrate (calibration metadata and metric) -> training_manifest, run_console
REASON = "reason"  # calibrate (calibration: why (not) blessed) -> training_manifest
THRESHOLD_MESSAGE = "threshold_message"  # calibrate (calibration) -> UI
PASSED = "passed"  # validate_export (report metadata and metric) -> run_console, training_manifest
LATENCY_RUNTIME = "latency_runtime"  # validate_export (report) -> UI
QUANTIZATION = "quantization"  # export_tfjs (bundle) -> validate_export's summary, run_console, manifest
QUANTIZATION_REASON = "quantization_reason"  # export_tfjs (bundle) -> validate_export's summary, manifest
QUANTIZATION_REQUESTED = "quantization_requested"  # export_tfjs (bundle) -> validate_export's summary
TOOLCHAIN = "toolchain"  # export_tfjs (bundle: the converters' versions) -> validate_export's summary, manifest
MODEL_ID = "model_id"  # stage_weights (weights, from pretrained.staged_summary) -> run_console
SOURCE = "source"  # stage_weights (weights, from pretrained.staged_summary) -> run_console
PRETRAINED = "pretrained"  # stage_weights (weights metadata), baseline (metric) -> run_console
GIT_COMMIT = "git_commit"  # training_manifest (manifest) -> UI
TIMESTAMP = "timestamp"  # training_manifest (manifest) -> UI
PHASE_PREFIX = "phase_"  # training_manifest (manifest): phase_<n> -> its status -> run_console
PLAN_CRITERIA = "plan_criteria"  # calibrate (calibration.json: value/bound/met each) -> bundle, manifest
PLAN_CRITERIA_MET = "plan_criteria_met"  # calibrate, training_manifest (metric, metadata) -> run_console
GATE_BOUNDS = "gate_bounds"  # calibrate (calibration.json: bounds used vs the plan's) -> bundle, manifest
RUN_STATUS = "run_status"  # training_manifest (manifest: completed | failed) -> run_console
FAILED_TASK = "failed_task"  # training_manifest (manifest: the task that failed, "" when none) -> run_console

# ---- metric names -------------------------------------------------------------------------

# ingest -> run_console (records_kept, records_dropped)
RECORDS_READ = "records_read"
RECORDS_VALID = "records_valid"
RECORDS_KEPT = "records_kept"
UNIQUE_IMAGES = "unique_images"
PERMISSIVE_SHARE_OF_VALID = "permissive_share_of_valid"
RECORDS_DROPPED = "records_dropped"
INGEST_METRICS = (RECORDS_READ, RECORDS_VALID, RECORDS_KEPT, UNIQUE_IMAGES, CLASSES, PERMISSIVE_SHARE_OF_VALID)

# cache_images (the CacheReport's fields, logged as is) -> run_console (cached, fetched, failed, fail_rate)
CACHED = "cached"
FETCHED = "fetched"
REUSED = "reused"
FAILED = "failed"
FAIL_RATE = "fail_rate"
TOO_SMALL = "too_small"
DUPLICATES = "duplicates"
LABEL_CONFLICTS = "label_conflicts"
IMAGES_PER_SECOND = "images_per_second"
CACHE_METRICS = (CACHED, FETCHED, REUSED, FAILED, FAIL_RATE, TOO_SMALL, DUPLICATES, LABEL_CONFLICTS, IMAGES_PER_SECOND)

# split / regional_split (shared.data.split.split_metrics) -> run_console (<split>_images, leak_free)
IMAGES_SUFFIX = "_images"  # <split>_images
CLASSES_SUFFIX = "_classes"  # <split>_classes
TRAIN_VAL_CLASS_OVERLAP = "train_val_class_overlap"
LEAK_FREE = "leak_free"
UNLEARNABLE_IN_REGION_PREFIX = "unlearnable_in_region_"  # unlearnable_in_region_<split>

# baseline, evaluate_teacher (results JSON too) -> run_console, training_manifest (phases 0, 1, 2)
TOP1_ACCURACY = "top1_accuracy"
TOP5_ACCURACY = "top5_accuracy"
CHANCE_TOP1 = "chance_top1"
LOSS = "loss"
SHARE_CLASSES_RECALL_ABOVE_THRESHOLD = "share_classes_recall_above_threshold"
REGION_TOP1_PREFIX = "region_top1:"  # evaluate_teacher: region_top1:<region> on the common test set
# (":" is in no fixed metric name, so no region or teacher name can overwrite one: METRIC_NAMESPACES)
BASELINE_METRICS = (TOP1_ACCURACY, TOP5_ACCURACY, CHANCE_TOP1)
TEACHER_TEST_METRICS = (TOP1_ACCURACY, TOP5_ACCURACY, LOSS, SHARE_CLASSES_RECALL_ABOVE_THRESHOLD)

# train_teacher: val_<best_metrics key of shared.train.loop> -> run_console (val_top1_acc)
TEACHER_VAL_PREFIX = "val_"
TEACHER_VAL_TOP1 = TEACHER_VAL_PREFIX + "top1_acc"
EPOCHS_RUN = "epochs_run"
TRAINED_FROM_SCRATCH = "trained_from_scratch"

# teacher_logits (the summary of shared.distill.teacher_logits.run_teacher_logits, logged as is) -> run_console
TOP_K = "k"
TRAIN_TOP1 = "train_top1"  # also train_student's
BYTES_PER_SAMPLE = "bytes_per_sample"  # also combine_soft_labels'

# combine_soft_labels -> run_console (samples, teacher_agreement), training_manifest (phase 3)
MEAN_ENTROPY = "mean_entropy"
TEACHER_AGREEMENT = "teacher_agreement"
MAX_ROW_SUM_ERROR = "max_row_sum_error"
COVERAGE_PREFIX = "coverage:"  # coverage:<teacher>: samples that teacher labelled
TEMPERATURES = "temperatures"  # teacher_logits (logits: temperatures whose log-sum-exp is stored) -> UI
EFFECTIVE_WEIGHTS = "effective_weights"  # combine_soft_labels (per coverage pattern) -> training_manifest
TOPK_MASS_MEAN = "topk_mass_mean"  # combine_soft_labels (metric, metadata: kept T-mass) -> training_manifest
TOPK_MASS_MIN = "topk_mass_min"
KEPT_MASS_SHORTFALL_BOUND_MEAN = "kept_mass_shortfall_bound_mean"  # (soft_labels.kept_mass_shortfall_bound)
KEPT_MASS_SHORTFALL_BOUND_MAX = "kept_mass_shortfall_bound_max"
SOFT_LABEL_MASS_METRICS = (
    TOPK_MASS_MEAN,
    TOPK_MASS_MIN,
    KEPT_MASS_SHORTFALL_BOUND_MEAN,
    KEPT_MASS_SHORTFALL_BOUND_MAX,
)
SOFT_LABEL_METRICS = (
    SAMPLES,
    CLASSES,
    MEAN_ENTROPY,
    TEACHER_AGREEMENT,
    MAX_ROW_SUM_ERROR,
    BYTES_PER_SAMPLE,
    TEMPERATURE,
)

# train_student (metrics; val_top1/test_top1 also on the model) -> training_manifest (phase 4), run_console
VAL_TOP1 = "val_top1"  # also calibrate's
VAL_TOP5 = "val_top5"
VAL_LOSS = "val_loss"
TEST_TOP1 = "test_top1"  # also calibrate's
TEST_TOP5 = "test_top5"
PARAMETERS = "parameters"
SIZE_MB_FP32 = "size_mb_fp32"
FINAL_STAGE_FINETUNING = "final_stage_finetuning"
CE_CONTROL_VAL_TOP1 = "ce_control_val_top1"
CE_CONTROL_TEST_TOP1 = "ce_control_test_top1"
DISTILLATION_GAIN_TOP1 = "distillation_gain_top1"
DISTILLATION_GAIN_TEST_TOP1 = "distillation_gain_test_top1"
TEST_REGION_TOP1_PREFIX = "test_region_top1:"  # test_region_top1:<region>
STUDENT_STAGES = ("distillation", "finetuning")  # <stage>_val_top1, <stage>_test_top1
STUDENT_METRICS = (VAL_TOP1, VAL_TOP5, VAL_LOSS, TEST_TOP1, TEST_TOP5, TRAIN_TOP1, PARAMETERS, SIZE_MB_FP32)

# calibrate (calibration.json has the same keys) -> training_manifest (phase 5), run_console
ECE_BEFORE = "ece_before"
ECE_AFTER = "ece_after"
MCE_BEFORE = "mce_before"
MCE_AFTER = "mce_after"
THRESHOLD = "threshold"
COVERAGE = "coverage"
PRECISION_AT_THRESHOLD = "precision_at_threshold"
TEST_ECE_AFTER = "test_ece_after"
TEST_COVERAGE = "test_coverage"
TEST_PRECISION_AT_THRESHOLD = "test_precision_at_threshold"
THRESHOLD_REACHED = "threshold_reached"
CALIBRATION_METRICS = (
    TEMPERATURE,
    ECE_BEFORE,
    ECE_AFTER,
    MCE_BEFORE,
    MCE_AFTER,
    THRESHOLD,
    COVERAGE,
    PRECISION_AT_THRESHOLD,
    VAL_TOP1,
    TEST_TOP1,
    TEST_ECE_AFTER,
    TEST_COVERAGE,
    TEST_PRECISION_AT_THRESHOLD,
)

# export_tfjs -> run_console (model_size_mb), training_manifest (phase 6)
MODEL_SIZE_MB = "model_size_mb"  # also validate_export's
FP16_SIZE_MB = "fp16_size_mb"
UINT8_SIZE_MB = "uint8_size_mb"
MIXED_SIZE_MB = "mixed_size_mb"  # fp16 backbone + uint8 classifier head
ONNX_MAX_ABS_DIFF = "onnx_max_abs_diff"
EXPORT_SECONDS = "export_seconds"
SHARDS = "shards"  # weight shards in the bundle
EXPORT_METRICS = (MODEL_SIZE_MB, FP16_SIZE_MB, UINT8_SIZE_MB, ONNX_MAX_ABS_DIFF, EXPORT_SECONDS, MIXED_SIZE_MB, SHARDS)
AUTO_TRIALS = "auto_trials"  # export_tfjs (bundle): quantization auto's modes tried, each with why -> manifest
WEIGHT_SHARD_MB = "weight_shard_mb"  # export_tfjs (bundle) -> validate_export's summary, manifest

# validate_export -> run_console (logits_correlation, top1_agreement, passed), training_manifest (phase 6)
LOGITS_CORRELATION = "logits_correlation"
TOP1_AGREEMENT = "top1_agreement"
MAX_ABS_DIFF = "max_abs_diff"
NODE_LATENCY_MS_MEDIAN = "node_latency_ms_median"
LATENCY_MS_MEDIAN = "latency_ms_median"
TOP1_FLIPS = "top1_flips"  # parity images whose TF.js top-1 differs from PyTorch's
PYTORCH_TEST_TOP1 = "pytorch_test_top1"  # the PyTorch student's top-1 on the parity (test) images
EXPORTED_TEST_TOP1 = "exported_test_top1"  # the TF.js bundle's top-1 on the same images
TOP1_AGREEMENT_CI95 = "top1_agreement_ci95"  # [low, high], 95 % Wilson interval
PARITY_SAMPLE = "parity_sample"  # plan-sized (>= 1,000 images or all of test) or local
VALIDATION_METRICS = (
    LOGITS_CORRELATION,
    TOP1_AGREEMENT,
    MAX_ABS_DIFF,
    MODEL_SIZE_MB,
    NODE_LATENCY_MS_MEDIAN,
    LATENCY_MS_MEDIAN,
    TOP1_FLIPS,
    PYTORCH_TEST_TOP1,
    EXPORTED_TEST_TOP1,
)

# Metric names built from a user's name (a region, a teacher): each prefix ends in ":", which no
# fixed metric name contains (tests/unit/test_artifact_keys.py), so the namespaces cannot collide.
METRIC_NAMESPACES = (REGION_TOP1_PREFIX, COVERAGE_PREFIX, TEST_REGION_TOP1_PREFIX)

# publish (metric) -> training_manifest's run_summary
RELEASE_PUBLISHED = "release_published"
