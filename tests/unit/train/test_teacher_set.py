"""The run's teachers (shared/train/teacher_set.py): one source of truth for the teacher weights
(the pipeline parameters), regional configs layered on the regional base (EU_CORE takes
the plan's regional training settings), and combine_soft_labels using exactly those
weights."""

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from shared.config.pipeline import load_pipeline_config  # noqa: E402
from shared.config.teacher import load_teacher_config  # noqa: E402
from shared.train.teacher_set import teacher_set  # noqa: E402

CLUSTER = ROOT / "config" / "cluster.yaml"


def test_eu_core_takes_the_regional_configuration_unless_its_file_says_otherwise():
    _, regional = teacher_set(load_pipeline_config(CLUSTER))
    core = next(t for t in regional if t["teacher"] == "EU_CORE")["config"]
    base = load_teacher_config(ROOT / "config" / "teacher_regional.yaml")
    # teacher_eu_core.yaml has no training section: the plan's regional settings (2.1), not the global ones
    assert core["training"]["learning_rate"] == base["training"]["learning_rate"] == 2.0e-5
    assert core["training"]["epochs"] == 12 and core["regularization"] == base["regularization"]
    # its own regions, not the base file's EU_SW
    assert core["data"]["region_filter"] == "EU_NORTH,EU_EAST"


def test_the_pipeline_weights_decide_and_student_yaml_is_only_the_default(tmp_path):
    cfg = load_pipeline_config(CLUSTER)
    _, regional = teacher_set(cfg)
    assert {t["teacher"]: t["weight"] for t in regional} == {"EU_SW": 0.4, "EU_CORE": 0.2}  # not student.yaml's 0.5
    no_weight = load_pipeline_config(
        CLUSTER,
        {
            "teachers.regional": [
                {"name": "EU_SW", "regions": "EU_SW", "config": str(ROOT / "config" / "teacher_regional.yaml")},
                {"name": "EU_EAST", "regions": "EU_EAST"},
            ]
        },
    )
    _, regional = teacher_set(no_weight)
    # EU_SW has none in the pipeline config: student.yaml's entry for EU_SW (0.5); EU_EAST: none anywhere -> 1.0
    assert {t["teacher"]: t["weight"] for t in regional} == {"EU_SW": 0.5, "EU_EAST": 1.0}


def test_combine_uses_the_pipeline_weight_not_student_yaml(tmp_path):
    from shared.config.student import load_student_config
    from shared.distill.soft_labels import SoftLabels, run_combine
    from shared.distill.teacher_logits import TeacherLogits

    classes = ["a", "b"]
    train = [{"image_id": "x", "taxon": "a", "region": "EU_SW"}]

    def logits(name, regions, hot):
        vals = np.array([[4.0, 0.0]], np.float16) if hot == 0 else np.array([[0.0, 4.0]], np.float16)
        order = np.argsort(-vals.astype(np.float32), 1)
        v = np.take_along_axis(vals, order, 1)
        lse = np.log(np.exp(vals.astype(np.float32)).sum(1))
        tl = TeacherLogits(
            image_ids=np.array(["x"]),
            indices=order.astype(np.int32),
            values=v,
            logsumexp=lse.astype(np.float32),
            confidences=np.exp(v[:, 0] - lse).astype(np.float32),
            labels=np.array([0], np.int32),
            classes=classes,
            name=name,
            regions=regions,
        )
        p = tmp_path / f"{name}.npz"
        tl.save(p)
        return str(p)

    student = load_student_config(ROOT / "config" / "student.yaml")  # says 0.5 / 0.5
    m = run_combine(
        [(logits("global", "", 0), 0.9), (logits("EU_SW", "EU_SW", 1), 0.1)],
        train,
        student,
        str(tmp_path / "soft.npz"),
        k=2,
    )
    assert m["weights"] == {"global": 0.9, "EU_SW": 0.1}
    sl = SoftLabels.load(tmp_path / "soft.npz")
    p_a = float(sl.values[0][list(sl.indices[0]).index(0)])
    hot = 1 / (1 + np.exp(-4 / 3))  # softmax([4, 0] / T) at the student's T = 3
    assert p_a == pytest.approx(0.9 * hot + 0.1 * (1 - hot), abs=0.005)  # 0.9 / 0.1, not student.yaml's 0.5 / 0.5


def test_compiled_pipeline_nests_regional_splits_and_scores_every_teacher_on_the_global_test(tmp_path):
    import yaml

    import pipeline

    path = pipeline.compile_pipeline(load_pipeline_config(CLUSTER), str(tmp_path / "p.yaml"))
    spec = next(yaml.safe_load_all(Path(path).read_text()))
    loop = next(v for k, v in spec["components"].items() if k.startswith("comp-for-loop"))["dag"]["tasks"]
    assert loop["regional-split"]["inputs"]["artifacts"] == {
        f"global_{s}": {"componentInputArtifact": f"pipelinechannel--split-{s}"} for s in ("train", "val", "test")
    }
    assert loop["evaluate-teacher-2"]["inputs"]["artifacts"]["test"] == {
        "componentInputArtifact": "pipelinechannel--split-test"
    }
    root = spec["root"]["dag"]["tasks"]
    assert root["evaluate-teacher"]["inputs"]["artifacts"]["test"]["taskOutputArtifact"] == {
        "producerTask": "split",
        "outputArtifactKey": "test",
    }
