"""Phase 3: combine the global and regional teachers' logits into soft labels."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from components.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def combine_soft_labels(
    global_logits: Input[Artifact],
    regional_logits: Input[list[Artifact]],
    train: Input[Dataset],
    student_config: dict,
    top_k: int,
    soft_labels: Output[Artifact],
    metrics: Output[Metrics],
):
    """Union class space, per-teacher weights (student.yaml) renormalised per sample.

    Args:
        global_logits: The global teacher's top-k logits (teacher_logits); its metadata carries its weight.
        regional_logits: Every regional teacher's top-k logits (collected from the ParallelFor).
        train: The train split the logits were computed on.
        student_config: The student config (the plan's student.yaml, loaded): distillation temperature
            and teacher weights.
        top_k: Classes kept per sample in the combined soft labels.

    Returns:
        soft_labels: The combined soft labels per train sample (sparse top-k); its metadata carries the
            classes, samples, teacher weights and temperature.
        metrics: Samples, classes, mean entropy, teacher agreement, row-sum error, bytes per sample and
            each teacher's coverage.
    """
    from shared import artifact_keys as K
    from shared.distill.soft_labels import run_combine
    from shared.io.records import load_jsonl

    teachers = [(a.path, float(a.metadata.get(K.WEIGHT, 1.0))) for a in [global_logits, *regional_logits]]
    m = run_combine(teachers, load_jsonl(train.path), student_config, soft_labels.path, top_k)
    soft_labels.metadata.update(
        {K.CLASSES: m["classes"], K.SAMPLES: m["samples"], K.WEIGHTS: m["weights"], K.TEMPERATURE: m["temperature"]}
    )
    for key in K.SOFT_LABEL_METRICS:
        metrics.log_metric(key, m[key])
    for name, n in m["coverage"].items():
        metrics.log_metric(K.COVERAGE_PREFIX + name, n)
    print("soft labels:", {k: v for k, v in m.items() if k != "coverage"})
