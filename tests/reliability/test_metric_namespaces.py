"""A region or teacher named like a metric (issue 22, item 4): a region called "accuracy" once
logged top1_accuracy over the teacher's headline figure (0.000 shown, 0.333 true). Names built
from a user's name now live in their own namespace (shared.artifact_keys.METRIC_NAMESPACES)."""

from kfp.dsl import Metrics

from shared import artifact_keys as K

HOSTILE = ["accuracy", "top1_accuracy", "ACCURACY", "", "loss", "region_top1:x", "val_top1"]
FIXED = {v for n, v in vars(K).items() if n.isupper() and isinstance(v, str) and not n.endswith(("_PREFIX", "_SUFFIX"))}


def test_hostile_region_names_cannot_overwrite_a_teachers_headline_metric(tmp_path):
    m = Metrics(uri=str(tmp_path / "metrics"))
    m.log_metric(K.TOP1_ACCURACY, 0.333)
    for region in HOSTILE:  # what evaluate_teacher logs per region
        m.log_metric(K.REGION_TOP1_PREFIX + region, 0.0)
        m.log_metric(K.TEST_REGION_TOP1_PREFIX + region, 0.0)
        m.log_metric(K.COVERAGE_PREFIX + region, 0.0)
    assert m.metadata[K.TOP1_ACCURACY] == 0.333
    assert not FIXED & {p + r for p in K.METRIC_NAMESPACES for r in HOSTILE}
