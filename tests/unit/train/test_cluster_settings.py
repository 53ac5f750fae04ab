"""Cluster-sized batches and controls where they matter (issue 20, items 7, 9, 10): batch_plan
(per-GPU batch, accumulation, a named learning-rate scaling rule against the plan's batch,
plan_exact), what config/cluster.yaml makes of the plan's teacher files, the student's ship
rule and determinism defaults, and what the manifest says about each."""

import math
import types

import pytest

from shared import artifact_keys as K
from shared.config.pipeline import load_pipeline_config
from shared.config.schema import ConfigError
from shared.config.student import load_student_config
from shared.config.teacher import batch_plan, load_teacher_config
from shared.manifest.training_manifest import _phase_4, _teacher_entry, _with_checkpoint
from shared.train.student import shipped_stage, stage_settings
from shared.train.teacher import settings_from_config
from shared.train.teacher_set import teacher_set


def _training(**kw) -> dict:
    return load_teacher_config({"training": kw})["training"]


def test_plan_numbers_by_default():
    b = batch_plan(_training())
    assert (b["plan_batch"], b["per_gpu_batch"], b["grad_accum_steps"], b["effective_batch"]) == (4, 4, 1, 4)
    assert b["lr"] == b["plan_lr"] == 3e-5 and b["lr_factor"] == 1.0
    assert b["deviation"] == "the plan's batch and learning rate"


@pytest.mark.parametrize(
    ("rule", "factor"),
    [("none", 1.0), ("linear", 32.0), ("sqrt", math.sqrt(32.0))],
)
def test_scaling_rules_against_the_plans_batch(rule, factor):
    b = batch_plan(_training(per_gpu_batch_size=32, grad_accum_steps=2, lr_scaling=rule), world=2)
    assert b["effective_batch"] == 32 * 2 * 2 and b["gpus"] == 2
    assert b["lr_factor"] == pytest.approx(factor) and b["lr"] == pytest.approx(3e-5 * factor)
    assert "effective batch 128 (32 per GPU x 2 accumulation x 2 GPUs) instead of the plan's 4" in b["deviation"]
    assert f"({rule} scaling)" in b["deviation"]


def test_plan_exact_keeps_the_plans_step_over_all_gpus():
    t = _training(per_gpu_batch_size=64, grad_accum_steps=4, lr_scaling="linear", plan_exact=True)
    b = batch_plan(t, world=2)
    assert (b["per_gpu_batch"], b["grad_accum_steps"], b["effective_batch"], b["lr"]) == (2, 1, 4, 3e-5)
    assert b["plan_exact"] and b["lr_scaling"] == "none"
    with pytest.raises(ConfigError, match="batch 4 does not divide over 3 GPUs"):
        batch_plan(t, world=3)


def test_bad_batch_keys_are_named():
    with pytest.raises(ConfigError, match="training.lr_scaling: 'cubic'"):
        load_teacher_config({"training": {"lr_scaling": "cubic"}})
    with pytest.raises(ConfigError, match="training.per_gpu_batch_size"):
        load_teacher_config({"training": {"per_gpu_batch_size": -1}})
    with pytest.raises(ConfigError, match="training.ship: 'last'"):
        load_student_config({"training": {"ship": "last"}})


def test_the_loop_trains_at_the_planned_batch_and_lr():
    cfg = load_teacher_config({"training": {"per_gpu_batch_size": 16, "grad_accum_steps": 4, "lr_scaling": "sqrt"}})
    s = settings_from_config(cfg, 5, world=1)
    assert (s.batch_size, s.grad_accum_steps) == (16, 4) and s.lr == pytest.approx(3e-5 * 4)
    st = load_student_config({"training": {"per_gpu_batch_size": 256, "lr_scaling": "linear"}})
    d, f = stage_settings(st, "distillation", 5), stage_settings(st, "finetuning", 5)
    assert d.batch_size == f.batch_size == 256
    assert d.lr == pytest.approx(1e-4 * 2) and f.lr == pytest.approx(5e-5 * 2)  # both stages scale alike


def test_cluster_config_deviates_by_keys_and_leaves_the_plans_files_as_written():
    cfg = load_pipeline_config("config/cluster.yaml")
    g, regional = teacher_set(cfg)
    assert g["training"]["batch_size"] == 4 and g["training"]["learning_rate"] == 3e-5  # the plan's file
    b = batch_plan(g["training"])
    assert b["effective_batch"] == 64 and b["lr_scaling"] == "sqrt" and b["lr"] == pytest.approx(1.2e-4)
    for r in regional:
        rb = batch_plan(r["config"]["training"])
        assert rb["effective_batch"] == 64 and rb["lr"] == pytest.approx(r["config"]["training"]["learning_rate"] * 4)
    assert g["callbacks"]["min_epochs"] >= 1 and g["callbacks"]["min_delta"] > 0
    assert cfg["student"]["train_ce_control"] is True
    exact = load_pipeline_config("config/cluster.yaml", {"teachers.overrides": {"training.plan_exact": True}})
    assert batch_plan(teacher_set(exact)[0]["training"])["effective_batch"] == 4


def test_ce_control_and_determinism_are_on_by_default():
    assert load_pipeline_config(None)["student"]["train_ce_control"] is True
    s = load_student_config({})
    assert s["training"]["deterministic"] is True and s["training"]["ship"] == "finetuned"


def test_ship_rule():
    res = {"distillation": {"val_top1": 0.8}, "finetuning": {"val_top1": 0.7}}
    both = ["distillation", "finetuning"]
    assert shipped_stage("finetuned", both, res) == ("finetuning", "ship: finetuned (the plan's fine-tuned model)")
    assert shipped_stage("best_val", both, res)[0] == "distillation"
    assert shipped_stage("best_val", both, {**res, "finetuning": {"val_top1": 0.8}})[0] == "finetuning"  # tie: later
    only, why = shipped_stage("finetuned", ["distillation"], res)
    assert only == "distillation" and "no fine-tuning epochs ran" in why


def test_the_manifest_says_how_each_model_trained():
    batch = batch_plan(_training(per_gpu_batch_size=32, grad_accum_steps=2, lr_scaling="sqrt"))
    det = {"deterministic": True, "nondeterministic_ops": ["_efficient_attention_backward"]}
    model = types.SimpleNamespace(
        uri="gs://b/global",
        metadata={
            K.MODEL_NAME: "vit",
            K.STOP_REASON: "completed all 10 epochs; best checkpoint: epoch 9 (top1_acc 0.8000)",
            K.BATCH_PLAN: batch,
            K.DETERMINISM: det,
        },
    )
    e = _teacher_entry(_with_checkpoint({K.TOP1_ACCURACY: 0.8}, model), None)
    assert e["stop_reason"].startswith("completed all 10 epochs")
    assert e["batch"]["plan_batch"] == 4 and e["batch"]["effective_batch"] == 64 and e["batch"]["lr_scaling"] == "sqrt"
    assert e["batch"]["lr"] == pytest.approx(1.2e-4) and "instead of the plan's 4" in e["batch"]["deviation"]
    assert e["determinism"] == det
    student = {
        K.FINAL_STAGE: "finetuning",
        K.SHIP_RULE: "ship: finetuned (the plan's fine-tuned model)",
        K.STOP_REASON: {"distillation": "completed all 10 epochs", "finetuning": "completed all 10 epochs"},
        K.BATCH_PLAN: batch_plan(load_student_config({})["training"]),
        K.DETERMINISM: {"distillation": det, "finetuning": det},
    }
    p4 = _phase_4(student, {}, {"student_min_top1": 0.7})
    assert p4["ship_rule"].startswith("ship: finetuned") and p4["stop_reason"]["finetuning"]
    assert p4["batch"]["deviation"] == "the plan's batch and learning rate" and p4["determinism"]["distillation"] == det
    bare = _teacher_entry({K.TOP1_ACCURACY: 0.8}, None)  # a model without the record: nothing invented
    assert not {"stop_reason", "batch", "determinism"} & set(bare)
