"""Hostile or wrong artifacts and configs (issue 12): files from outside are data, never
code (a pickled payload in any loader is refused and never runs); soft labels made for
other records or classes are refused; config values that would change a run silently
fail when the config is loaded, naming the key."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from shared.config.pipeline import ConfigError, load_pipeline_config  # noqa: E402
from shared.config.student import load_student_config  # noqa: E402
from shared.config.teacher import load_teacher_config  # noqa: E402
from tests.conftest import TINY_TEACHER  # noqa: E402

RAN: list[str] = []


class Payload:
    """Unpickling this calls RAN.append: proof that code ran."""

    def __reduce__(self):
        return (RAN.append, ("payload ran",))


def _planted(path: Path, obj) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)  # a torch zip file whose data.pkl carries the payload


def test_checkpoint_with_a_payload_is_refused_and_never_runs(tmp_path):
    from shared.io.checkpoint import CheckpointError, load_checkpoint

    p = tmp_path / "best_model.pt"
    _planted(
        p, {"model_name": "test_resnet", "classes": ["a"], "image_size": 32, "state_dict": {}, "config": Payload()}
    )
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(p)
    assert RAN == []


def test_training_state_with_a_payload_is_not_resumed_and_never_runs(tmp_path):
    from shared.train.loop import _load_training_state

    p = tmp_path / "last_checkpoint.pt"
    _planted(p, {"model": {}, "epoch": 3, "rng": Payload()})
    logged = []
    assert _load_training_state(p, logged.append) is None
    assert RAN == [] and "cannot read" in logged[0]


def test_a_real_training_state_still_resumes(tmp_path):
    """weights_only loading keeps what resuming needs (optimizer, scheduler, RNG states)."""
    import random

    from shared.train.loop import _load_training_state, _numpy_rng_from, _save_training_state

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    np.random.seed(7)
    _save_training_state(tmp_path / "s.pt", model, opt, sched, None, 2, 10, 0.5, 1, 0, [{"epoch": 0}])
    want = np.random.random()
    state = _load_training_state(tmp_path / "s.pt", print)
    assert state["epoch"] == 2 and state["global_step"] == 10
    np.random.set_state(_numpy_rng_from(state["rng"]["numpy"]))
    assert np.random.random() == want  # the numpy RNG continues where it was saved
    random.setstate(state["rng"]["python"])


@pytest.mark.parametrize("what", ["teacher logits", "soft labels"])
def test_npz_artifacts_with_pickled_objects_are_refused(tmp_path, what):
    from shared.distill.soft_labels import SoftLabels
    from shared.distill.teacher_logits import TeacherLogits
    from shared.io.atomic import save_npz

    p = tmp_path / "a.npz"
    save_npz(p, image_ids=np.array([Payload()], dtype=object), indices=np.zeros((1, 1), np.int32))
    loader = TeacherLogits.load if what == "teacher logits" else SoftLabels.load
    with pytest.raises(ValueError, match="not readable|Object arrays"):
        loader(p)
    assert RAN == []


# ---- soft labels for other records or classes -------------------------------------------


@pytest.fixture()
def soft_setup(cached_splits, tmp_path):
    from tests.unit.train.test_student_training import noisy_teacher_soft_labels

    train = cached_splits["train"]
    noisy_teacher_soft_labels(train, tmp_path / "soft.npz")
    cfg = {
        "model": {"name": "test_efficientnet", "image_size": 32, "pretrained": False},
        "training": {
            "batch_size": 16,
            "distillation_epochs": 1,
            "finetune_epochs": 0,
            "num_workers": 0,
            "channels_last": False,
        },
        "augmentation": {"train": {"resize": 36, "crop": 32}, "val": {"resize": 36, "center_crop": 32}},
    }
    return cfg, train, tmp_path


def test_soft_labels_for_other_records_are_refused(soft_setup, cached_splits):
    from shared.train.student import train_student

    cfg, train, tmp = soft_setup
    other = [dict(r, image_id=f"other-{r['image_id']}") for r in train]
    with pytest.raises(ValueError, match="made for other train records \\(0 of"):
        train_student(
            cfg,
            other,
            cached_splits["val"],
            cached_splits["cache_dir"],
            str(tmp / "o"),
            str(tmp / "soft.npz"),
            log=lambda *_: None,
        )
    relabelled = [dict(r, taxon="Unknown plant") if i == 0 else r for i, r in enumerate(train)]
    with pytest.raises(ValueError, match="made for other train records"):
        train_student(
            cfg,
            relabelled,
            cached_splits["val"],
            cached_splits["cache_dir"],
            str(tmp / "r"),
            str(tmp / "soft.npz"),
            log=lambda *_: None,
        )
    assert not (tmp / "o" / "best_model.pt").exists()


def test_soft_labels_with_a_tampered_class_list_are_refused(soft_setup):
    from shared.distill.soft_labels import SoftLabels
    from shared.io.atomic import load_npz, save_npz

    _, _, tmp = soft_setup
    z = load_npz(tmp / "soft.npz", "soft labels")
    z["classes"] = z["classes"][::-1].copy()
    save_npz(tmp / "tampered.npz", **z)
    with pytest.raises(ValueError, match="class list does not match its recorded digest"):
        SoftLabels.load(tmp / "tampered.npz")


def test_matching_soft_labels_distil_with_full_coverage(soft_setup, cached_splits):
    from shared.train.student import train_student

    cfg, train, tmp = soft_setup
    r = train_student(
        cfg,
        train,
        cached_splits["val"],
        cached_splits["cache_dir"],
        str(tmp / "ok"),
        str(tmp / "soft.npz"),
        log=lambda *_: None,
    )
    assert r["distilled"] and r["soft_label_coverage"] == 1.0


# ---- config values that would change a run silently --------------------------------------

LOCAL = ROOT / "config" / "local.yaml"


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"cache.resize": 0}, "cache.resize"),
        ({"cache.resize": -448}, "cache.resize"),
        ({"cache.max_fail_rate": 1.5}, "cache.max_fail_rate"),
        ({"cache.max_fail_rate": -0.1}, "cache.max_fail_rate"),
        ({"teachers.logits_top_k": 0}, "teachers.logits_top_k"),
        ({"teachers.global_weight": 0.0}, "teachers.global_weight"),
        ({"teachers.global_weight": -1.0}, "teachers.global_weight"),
        ({"calibration.target_precision": 1.2}, "calibration.target_precision"),
        ({"export.gates.max_ece": -0.1}, "export.gates.max_ece"),
        ({"teachers.regional": [{"name": "A", "regions": " , ,"}]}, "teachers.regional[0].regions"),
        (
            {"teachers.regional": [{"name": "A", "regions": "EU_SW"}, {"name": "A", "regions": "EU_EAST"}]},
            "teachers.regional[1].name",
        ),
        (
            {"teachers.regional": [{"name": "EU/SW", "regions": "EU_SW"}, {"name": "EU SW", "regions": "EU_EAST"}]},
            "teachers.regional[1].name",
        ),
        ({"teachers.regional": [{"name": "global", "regions": "EU_SW"}]}, "teachers.regional[0].name"),
        ({"teachers.regional": [{"name": "Student", "regions": "EU_SW"}]}, "teachers.regional[0].name"),
    ],
)
def test_pipeline_config_values_fail_at_load_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        load_pipeline_config(LOCAL, overrides)
    assert str(e.value).startswith(key), str(e.value)


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"callbacks.early_stopping_patience": 0}, "callbacks.early_stopping_patience"),
        ({"callbacks.early_stopping_patience": -2}, "callbacks.early_stopping_patience"),
        ({"data.region_filter": ", "}, "data.region_filter"),
        ({"augmentation.train.horizontal_flip": 1.5}, "augmentation.train.horizontal_flip"),
        ({"augmentation.train.vertical_flip": -0.2}, "augmentation.train.vertical_flip"),
        ({"augmentation.train.rotation": 400}, "augmentation.train.rotation"),
        ({"augmentation.train.blur": 2.0}, "augmentation.train.blur"),
        ({"augmentation.train.color_jitter.hue": 0.9}, "augmentation.train.color_jitter.hue"),
        ({"augmentation.train.color_jitter.brightness": -0.3}, "augmentation.train.color_jitter.brightness"),
        ({"augmentation.val.normalize.std": [0.2, 0.0, 0.2]}, "augmentation.val.normalize.std"),
        ({"augmentation.train.normalize.mean": [0.5, 0.5]}, "augmentation.train.normalize.mean"),
        ({"augmentation.train.crop": 40, "augmentation.train.resize": 48}, "augmentation.train.crop"),
        ({"augmentation.val.center_crop": 28}, "augmentation.val.center_crop"),
        ({"augmentation.train.resize": 30}, "augmentation.train.crop"),
    ],
)
def test_teacher_config_values_fail_at_load_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        load_teacher_config(TINY_TEACHER, overrides)
    assert str(e.value).startswith(key), str(e.value)


def test_the_plans_vit_with_a_mismatched_crop_is_refused():
    with pytest.raises(ConfigError, match="augmentation.train.crop: 224 differs from the model's image size 384"):
        load_teacher_config(ROOT / "config" / "teacher_global.yaml", {"augmentation.train.crop": 224})


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"teachers": [{"path": "g", "weight": 0.0}]}, "teachers[0].weight"),
        ({"augmentation.val.center_crop": 200}, "augmentation.val.center_crop"),
    ],
)
def test_student_config_values_fail_at_load_naming_the_key(overrides, key):
    raw = {"teachers": overrides.pop("teachers")} if "teachers" in overrides else {}
    with pytest.raises(ConfigError) as e:
        load_student_config(raw, overrides)
    assert str(e.value).startswith(key), str(e.value)


def test_a_region_filter_on_the_global_teacher_is_refused(tmp_path):
    import yaml

    import pipeline

    p = tmp_path / "teacher.yaml"
    p.write_text(yaml.safe_dump({**TINY_TEACHER, "data": {**TINY_TEACHER["data"], "region_filter": "EU_SW"}}))
    cfg = load_pipeline_config(LOCAL, {"teachers.global_config": str(p)})
    with pytest.raises(ConfigError, match="would narrow the global teacher"):
        pipeline.teacher_parameters(cfg)


def test_payloads_never_ran():
    assert RAN == []
