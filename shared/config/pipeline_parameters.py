"""The pipeline's run parameters: what each one means (the compiled spec's descriptions, shown
by the KFP UI's run form and `submit --dry-run`), and which of them the run_parameters step
records for the training manifest.

Every parameter of pipeline.build_pipeline's plantid_pipeline has an entry here;
tests/components/test_component_specs.py fails on a parameter without one. Their defaults are
the compiled config's values; a run's `--param` overrides them."""

from __future__ import annotations

PARAMETER_DOCS: dict[str, str] = {
    "source": "Where the records come from: mongo (data.mongo) or jsonl (records_uri).",
    "records_uri": "The records JSONL (gs:// or a path) when source is jsonl.",
    "snapshot_id": "Names the catalogue snapshot; a new id re-ingests (ingest caches per snapshot).",
    "mongo": "MongoDB database, collection, query, field_map and limit (the URI comes from a Secret).",
    "license_allow": "Licences whose images may be used (e.g. CC0, CC-BY, CC-BY-SA).",
    "min_side": "Smallest accepted image side in pixels (records and decoded images).",
    "cache_dir": "The image cache (a path on the cache volume, or gs://bucket/prefix).",
    "resize": "Short side of the cached images in pixels (the teachers crop from it).",
    "student_resize": "Short side of the student's own cached rendition (0: none).",
    "max_fail_rate": "Largest share of records whose image may fail to fetch or decode (plan 0.2: 5 %).",
    "fetch_policy": "Image fetch rules: host allow-list, private networks, size cap, timeouts, retries, rates.",
    "cache_workers": "Parallel image fetches of the cache step.",
    "split_seed": "Seed of the stratified train/val/test split.",
    "baseline_settings": "The phase-0 baseline: model, pretrained, weights file, image size.",
    "weights_cache": "Content-addressed cache of pretrained weights (stage_weights fills it).",
    "hub_endpoint": "A Hugging Face mirror for pretrained weights ('' = huggingface.co).",
    "weights_offline": "true: never download weights; every pinned file must already be in weights_cache.",
    "global_teacher_config": "The global teacher's full config (phase 1: model, data, training, callbacks).",
    "regional_teachers": "The regional teachers: name, regions, config and soft-label weight each (phase 2).",
    "global_teacher_weight": "The global teacher's weight in the soft labels (plan 3.2: 0.4).",
    "teacher_overrides": "Dotted-key overrides applied to every teacher config (e.g. training.epochs).",
    "logits_top_k": "Logits kept per image and teacher (the soft labels' top-k).",
    "checkpoint_dir": "Training checkpoints on the cache volume (a retried pod resumes from them).",
    "gpus_per_teacher": "GPUs per teacher pod (> 1: DDP with torchrun inside the pod).",
    "student_config": "The student's full config (phase 4: model, distillation, training, fine-tuning).",
    "gpus_per_student": "GPUs per student pod (> 1: DDP with torchrun inside the pod).",
    "train_ce_control": "Also train the student without soft labels: what distillation adds (plan 4.3).",
    "ece_threshold": "Calibration's ECE bound (plan 5.4: 0.10).",
    "target_precision": "Precision the confidence threshold is chosen for (plan 5.3: 0.95).",
    "calibration_objective": "What temperature scaling minimises (nll or ece).",
    "gate_min_val_top1": "Export gate: smallest student val top-1 (plan 4.3: 0.70).",
    "gate_max_ece": "Export gate: largest ECE after calibration (plan 5.4: 0.10).",
    "gate_min_coverage": "Export gate: smallest coverage at the threshold (plan 5.4: 0.80).",
    "gate_min_precision": "Export gate: smallest precision at the threshold (plan 5.4: 0.95).",
    "quantization": "TF.js weights: fp16, mixed (fp16 + uint8 head), uint8, none, or auto (first that passes).",
    "export_images": "Test images for the export's parity check (>= 1,000 for the plan's figure).",
    "min_parity_correlation": "Export gate: smallest logits correlation with PyTorch (plan 6.4: 0.995).",
    "min_parity_agreement": "Export gate: smallest top-1 agreement with PyTorch (0.99).",
    "weight_shard_mb": "Largest TF.js weight shard in MB.",
    "gate_max_bundle_mb": "Export gate: largest TF.js bundle in MB (plan 3.3: 20).",
    "gate_max_latency_ms": "Export gate: largest median single-image latency in a CPU browser (plan 6.4: 5,000).",
    "latency_runtime": "Where latency is measured: chromium-wasm (headless Chromium) or node-wasm.",
    "seed": "The run's seed (plan 7.3: same seed, same model).",
    "pipeline_settings": (
        "The compiled config's data, cache, split, calibration, export, weights and release sections "
        "(release: where the model is published, margins, force and reason)."
    ),
}

# Recorded by the manifest step through its own inputs (configs, seed, snapshot): the
# run_parameters step records every other parameter.
RECORDED_BY_MANIFEST = (
    "seed",
    "snapshot_id",
    "global_teacher_config",
    "regional_teachers",
    "student_config",
    "pipeline_settings",
)
RUN_PARAMETER_NAMES = tuple(n for n in PARAMETER_DOCS if n not in RECORDED_BY_MANIFEST)


def described_docstring(summary: str, names: list[str] | tuple[str, ...], returns: str = "") -> str:
    """A Google-style docstring whose Args are PARAMETER_DOCS for `names` (KFP reads the
    descriptions of a pipeline's or component's inputs from it). KeyError names a parameter
    without a description."""
    missing = [n for n in names if n not in PARAMETER_DOCS]
    if missing:
        raise KeyError(f"pipeline parameter(s) without a description in PARAMETER_DOCS: {missing}")
    args = "\n".join(f"    {n}: {PARAMETER_DOCS[n]}" for n in names)
    return f"{summary}\n\nArgs:\n{args}\n" + (f"\nReturns:\n    {returns}\n" if returns else "")


def overridden(values: dict, defaults: dict) -> list[str]:
    """The parameters whose value differs from the compiled default (as JSON would compare:
    1 == 1.0, which is how KFP passes numbers)."""
    return sorted(k for k, v in values.items() if k in defaults and not _same(v, defaults[k]))


def _same(a: object, b: object) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (isinstance(a, bool) and isinstance(b, bool) and a == b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b
