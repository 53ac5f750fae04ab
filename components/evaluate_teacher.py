"""Phases 1.3 / 2.3 / 2b.3: evaluate a teacher on a test split."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def evaluate_teacher(
    name: str,
    model: Input[Model],
    test: Input[Dataset],
    cache_dir: str,
    confusion_top_n: int,
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
    results: Output[Artifact],
):
    """Top-1/top-5/loss, per-region top-1, per-class recall; names are stable across
    runs so the KFP UI can compare them.

    Args:
        name: The teacher's name ("global", or the regional teacher's name).
        model: The teacher checkpoint (train_teacher).
        test: The test split it is scored on (the common global test set).
        cache_dir: The image cache (volume path or gs://).
        confusion_top_n: The confusion matrix covers this many most frequent classes (the rest: "other").

    Returns:
        metrics: top1_accuracy, top5_accuracy, loss, the share of classes above the recall threshold and
            top-1 per region.
        confusion: Confusion matrix of the most frequent classes.
        report: The evaluation as a page (HTML).
        results: Every figure with the teacher's name (JSON, read by the training manifest).
    """
    from shared import artifact_keys as K
    from shared.evaluate.evaluation import confusion_matrix_top, evaluate_checkpoint, report_html
    from shared.io.atomic import write_json, write_text
    from shared.io.records import load_jsonl

    m, logits, labels, classes = evaluate_checkpoint(model.path, load_jsonl(test.path), cache_dir)
    write_json(results.path, {K.TEACHER: name, **m})
    write_text(report.path, report_html(m, f"Teacher {name}: test split"))
    for key in K.TEACHER_TEST_METRICS:
        metrics.log_metric(key, m[key])
    for region, acc in m["per_region"].items():
        metrics.log_metric(K.REGION_TOP1_PREFIX + region, acc)
    names, matrix = confusion_matrix_top(logits, labels, classes, confusion_top_n)
    confusion.log_confusion_matrix(names, matrix)
    results.metadata.update({K.TEACHER: name, K.TOP1_ACCURACY: m["top1_accuracy"]})
    print(
        f"teacher {name}: test top1={m['top1_accuracy']:.3f} top5={m['top5_accuracy']:.3f} per_region={m['per_region']}"
    )
