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
        top_k: Classes kept per sample in the combined soft labels (their exact probabilities at the
            distillation temperature, plus one bin for the rest of the mass).

    Returns:
        soft_labels: The combined soft labels per train sample (sparse top-k and a rest bin); its metadata
            carries the classes, samples, teacher weights, temperature, the kept mass at that temperature
            (mean, min, and the bound on what it lacks) and the effective weights per coverage pattern.
        metrics: Samples, classes, mean entropy, teacher agreement, row-sum error, bytes per sample, the
            kept mass at the temperature (mean, min) with its shortfall bound, and each teacher's coverage.
    """
    from shared import artifact_keys as K
    from shared.distill.soft_labels import run_combine
    from shared.io.records import load_jsonl

    teachers = [(a.path, float(a.metadata.get(K.WEIGHT, 1.0))) for a in [global_logits, *regional_logits]]
    m = run_combine(teachers, load_jsonl(train.path), student_config, soft_labels.path, top_k)
    soft_labels.metadata.update(
        {
            K.CLASSES: m["classes"],
            K.SAMPLES: m["samples"],
            K.WEIGHTS: m["weights"],
            K.TEMPERATURE: m["temperature"],
            K.EFFECTIVE_WEIGHTS: m["effective_weights"],
            K.BYTES_PER_SAMPLE: m["bytes_per_sample"],
            **{key: m[key] for key in K.SOFT_LABEL_MASS_METRICS},
        }
    )
    for key in (*K.SOFT_LABEL_METRICS, *K.SOFT_LABEL_MASS_METRICS):
        metrics.log_metric(key, m[key])
    for name, n in m["coverage"].items():
        metrics.log_metric(K.COVERAGE_PREFIX + name, n)
    print("soft labels:", {k: v for k, v in m.items() if k not in ("coverage", "effective_weights")})
