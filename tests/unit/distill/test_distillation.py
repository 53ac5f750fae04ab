from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shared.config.pipeline import ConfigError
from shared.config.student import load_student_config, teacher_weight, timm_model_name
from shared.distill.losses import SoftLabelLookup, dense_targets, kd_loss, make_kd_loss_fn
from shared.distill.soft_labels import SoftLabels, TeacherSpec, combine_soft_labels, soft_label_metrics
from shared.distill.teacher_logits import TeacherLogits, sparsify, tempered_logsumexp

ROOT = Path(__file__).resolve().parents[3]


def _tl(name, classes, ids, logits, regions="", k=None, temperatures=(1.0, 2.0, 3.0)):
    z = torch.tensor(logits, dtype=torch.float32)
    idx, val, lse, conf = sparsify(z, k=k or len(classes))
    labels = np.zeros(len(ids), np.int32)
    t = np.array(temperatures, np.float32)
    return TeacherLogits(
        np.array(ids), idx, val, lse, conf, labels, classes, name, regions, t, tempered_logsumexp(z, temperatures)
    )


def _softmax(z, t=1.0):
    z = np.asarray(z, float) / t
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_union_alignment_disjoint_and_overlapping():
    a = _tl("a", ["x", "y"], ["s1", "s2"], [[2.0, 0.0], [0.0, 1.0]])
    b = _tl("b", ["z", "w"], ["s1", "s2"], [[1.0, 0.0], [0.0, 3.0]])  # disjoint classes
    sl = combine_soft_labels([TeacherSpec(a, 1.0), TeacherSpec(b, 1.0)], ["s1", "s2"], ["R", "R"], 1.0, k=4)
    assert sl.classes == ["w", "x", "y", "z"]
    dense = np.zeros((2, 4))
    np.put_along_axis(dense, sl.indices, sl.values.astype(float), 1)
    pa, pb = _softmax([[2, 0], [0, 1]]), _softmax([[1, 0], [0, 3]])
    expect = np.zeros((2, 4))
    expect[:, [1, 2]] += 0.5 * pa
    expect[:, [3, 0]] += 0.5 * pb
    assert np.allclose(dense, expect, atol=2e-3)
    c = _tl("c", ["y", "x"], ["s1", "s2"], [[0.0, 2.0], [1.0, 0.0]])  # overlapping, other order
    sl2 = combine_soft_labels([TeacherSpec(a, 1.0), TeacherSpec(c, 3.0)], ["s1", "s2"], ["R", "R"], 1.0, k=2)
    assert sl2.classes == ["x", "y"]
    d2 = np.zeros((2, 2))
    np.put_along_axis(d2, sl2.indices, sl2.values.astype(float), 1)
    assert np.allclose(d2, pa, atol=2e-3)  # c says the same as a, aligned by name


def test_region_filter_and_per_sample_renormalisation():
    g = _tl("global", ["x", "y"], ["s1", "s2", "s3"], [[2.0, 0.0], [2.0, 0.0], [2.0, 0.0]])
    r = _tl("EU_SW", ["x", "y"], ["s1", "s2", "s3"], [[0.0, 2.0], [0.0, 2.0], [0.0, 2.0]], "EU_SW")
    specs = [TeacherSpec(g, 0.4), TeacherSpec(r, 0.4, {"EU_SW"})]
    sl = combine_soft_labels(specs, ["s1", "s2", "s3"], ["EU_SW", "EU_NORTH", "OTHER"], 1.0, k=2)
    d = np.zeros((3, 2))
    np.put_along_axis(d, sl.indices, sl.values.astype(float), 1)
    pg, pr = _softmax([2, 0]), _softmax([0, 2])
    assert np.allclose(d[0], 0.5 * pg + 0.5 * pr, atol=2e-3)  # both apply: 0.4/0.8 each
    assert np.allclose(d[1], pg, atol=2e-3) and np.allclose(d[2], pg, atol=2e-3)  # only the global one
    m = soft_label_metrics(sl, specs, ["EU_SW", "EU_NORTH", "OTHER"])
    assert m["coverage"] == {"global": 3, "EU_SW": 1} and m["samples_with_2plus_teachers"] == 1
    assert m["teacher_agreement"] == 0.0
    with pytest.raises(ValueError, match="no applicable teacher .*s9"):
        combine_soft_labels([TeacherSpec(r, 1.0, {"EU_SW"})], ["s1", "s9"], ["EU_SW", "EU_SW"], 1.0)


def test_rows_sum_to_one_at_scale_and_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    n, c = 500, 300
    classes = [f"c{i}" for i in range(c)]
    ids = [f"s{i}" for i in range(n)]
    a = _tl("a", classes, ids, rng.normal(0, 3, (n, c)), k=32)  # top-32 like the pipeline
    b = _tl("b", classes[100:], ids[:200], rng.normal(0, 3, (200, c - 100)), "EU_SW", k=32)
    sl = combine_soft_labels([TeacherSpec(a, 0.5), TeacherSpec(b, 0.5, {"EU_SW"})], ids, ["EU_SW"] * n, 3.0, k=32)
    assert np.abs(sl.values.astype(np.float64).sum(1) + sl.rest - 1).max() < 1e-6  # k + 1 bins
    assert sl.rest.min() > 0.05  # 32 of 300 classes at T=3: the rest bin holds real mass
    sl.save(tmp_path / "sl.npz")
    back = SoftLabels.load(tmp_path / "sl.npz")
    assert np.array_equal(back.indices, sl.indices) and back.classes == sl.classes and back.temperature == 3.0
    assert np.array_equal(back.rest, sl.rest) and np.array_equal(back.values, sl.values)
    assert sl.bytes_per_sample() == 32 * 8 + 4
    from shared.io.atomic import load_npz, save_npz

    old = {k: v for k, v in load_npz(tmp_path / "sl.npz", "x").items() if k != "rest"}
    save_npz(tmp_path / "old.npz", **old)  # a file from before the rest bin: renormalised values
    with pytest.raises(ValueError, match="older version: no 'rest' array.*re-run combine_soft_labels"):
        SoftLabels.load(tmp_path / "old.npz")
    save_npz(tmp_path / "bad.npz", **{**old, "rest": np.full(n, 0.5, np.float32)})
    with pytest.raises(ValueError, match="bad.npz: soft labels: sample s0 is not a distribution"):
        SoftLabels.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match=r"no log-sum-exp at T=4 \(stored: 1, 2, 3\)"):
        combine_soft_labels([TeacherSpec(a, 1.0)], ids, ["EU_SW"] * n, 4.0, k=32)
    (tmp_path / "sl.npz").write_bytes((tmp_path / "sl.npz").read_bytes()[:-100])
    with pytest.raises(ValueError, match="checksum"):
        SoftLabels.load(tmp_path / "sl.npz")


def test_kd_loss_matches_direct_computation_with_t_squared():
    torch.manual_seed(0)
    s = torch.randn(4, 6)
    q = torch.softmax(torch.randn(4, 6) * 2, 1)
    idx = q.argsort(1, descending=True)
    vals = torch.gather(q, 1, idx)
    y = torch.tensor([0, 3, -1, 5])
    T = 3.0
    got = kd_loss(s, idx, vals, y, T, 0.7, 0.3)
    log_p = F.log_softmax(s / T, 1)
    kl = (q * (q.log() - log_p)).sum(1).mean()
    assert torch.allclose(kl, F.kl_div(log_p, q, reduction="batchmean"))
    ce = F.cross_entropy(s[[0, 1, 3]], y[[0, 1, 3]])
    assert torch.allclose(got, 0.7 * kl * T * T + 0.3 * ce, atol=1e-5)
    assert not torch.allclose(got, 0.7 * kl + 0.3 * ce)  # the T^2 factor is there


def test_sparse_lookup_gives_dense_reference_loss():
    rng = np.random.default_rng(1)
    n, c = 20, 12
    classes = [f"c{i}" for i in range(c)]
    dense_q = _softmax(rng.normal(0, 2, (n, c)))
    idx = np.argsort(-dense_q, 1).astype(np.int32)
    sl = SoftLabels(
        np.array([f"s{i}" for i in range(n)]), idx, np.take_along_axis(dense_q, idx, 1).astype(np.float16), classes, 2.0
    )
    # the dataset lists the samples in another order, and the student orders classes differently
    order = rng.permutation(n)
    student_classes = classes[::-1]
    lookup = SoftLabelLookup(sl, [f"s{i}" for i in order], student_classes)
    # every class kept: both targets are the dense one (the rest bin is empty)
    for target in ("topk_with_rest", "topk_renormalised"):
        _check_lookup_loss(make_kd_loss_fn(lookup, 2.0, 0.7, 0.3, target), dense_q, order, c)
    with pytest.raises(ValueError, match="distillation target 'plan' is not one of"):
        make_kd_loss_fn(lookup, 2.0, 0.7, 0.3, "plan")


def _check_lookup_loss(loss_fn, dense_q, order, c):
    logits = torch.randn(5, c)
    batch = torch.tensor([0, 3, 7, 8, 19])
    labels = torch.tensor([1, 2, 3, 4, 5])
    got = loss_fn(logits, labels, batch)
    q_student = torch.tensor(dense_q[order[batch.numpy()]][:, ::-1].copy(), dtype=torch.float32)
    log_p = F.log_softmax(logits / 2.0, 1)
    ref = 0.7 * F.kl_div(log_p, q_student, reduction="batchmean") * 4 + 0.3 * F.cross_entropy(logits, labels)
    assert torch.allclose(got, ref, atol=2e-3)
    assert torch.allclose(
        dense_targets(torch.tensor([[0, -1]]), torch.tensor([[0.5, 0.5]]), 3), torch.tensor([[1.0, 0.0, 0.0]])
    )


def test_student_config_as_in_plan():
    cfg = load_student_config(ROOT / "config" / "student.yaml")
    assert cfg["training"]["learning_rate"] == 1e-4  # "1e-4" is text to YAML
    assert timm_model_name(cfg["model"]) == "mobilenetv2_100"
    assert cfg["training"]["distillation_epochs"] == 10 and cfg["training"]["finetune_epochs"] == 10
    assert teacher_weight(cfg, "", 0.1) == 0.5 and teacher_weight(cfg, "EU_SW", 0.1) == 0.5
    assert teacher_weight(cfg, "EU_NORTH,EU_EAST", 0.2) == 0.2  # not in the plan's file: pipeline weight
    with pytest.raises(ConfigError, match=r"distillation.temperatur: unknown key"):
        load_student_config({"distillation": {"temperatur": 2}})
    with pytest.raises(ConfigError, match=r"teachers\[0\].wieght: unknown key"):
        load_student_config({"teachers": [{"wieght": 1}]})
    with pytest.raises(ConfigError, match="alpha"):
        timm_model_name({"name": "mobilenetv2", "alpha": 0.3})


def test_plan_student_one_distillation_step():
    """The real student (mobilenetv2_100, 9,000 classes) takes one KD step on a tiny batch."""
    import timm

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=9000, drop_rate=0.2)
    params = sum(p.numel() for p in model.parameters())
    # ~55 MB fp32, the 9,000-class head (11.5M weights) dominating; ~27 MB fp16, ~14 MB uint8
    assert params * 4 / 1e6 < 60
    x = torch.randn(2, 3, 96, 96)
    idx = torch.randint(0, 9000, (2, 32))
    vals = torch.softmax(torch.randn(2, 32), 1)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    loss = kd_loss(model(x), idx, vals, torch.tensor([1, 2]), 3.0)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)


def test_distillation_target_is_a_named_config_choice():
    assert load_student_config({})["distillation"]["target"] == "topk_with_rest"
    cfg = load_student_config({"distillation": {"target": "topk_renormalised"}})
    assert cfg["distillation"]["target"] == "topk_renormalised"
    with pytest.raises(ConfigError, match="distillation.target: 'renormalised' is not one of topk_with_rest"):
        load_student_config({"distillation": {"target": "renormalised"}})


def test_the_rest_bin_changes_the_target_and_absorbs_classes_the_student_lacks():
    torch.manual_seed(3)
    s = torch.randn(3, 10)
    idx = torch.tensor([[0, 1], [2, 3], [4, 5]])
    vals = torch.tensor([[0.3, 0.1], [0.5, 0.2], [0.05, 0.01]])
    rest = 1 - vals.sum(1)
    y = torch.tensor([0, 2, 4])
    with_rest = kd_loss(s, idx, vals, y, 3.0, 1.0, 0.0, soft_rest=rest)
    assert torch.allclose(with_rest, kd_loss(s, idx, vals, y, 3.0, 1.0, 0.0))  # rest defaults to 1 - kept
    renorm = kd_loss(s, idx, vals, y, 3.0, 1.0, 0.0, target="topk_renormalised")
    assert renorm > 2 * with_rest  # the renormalised target is far sharper than the plan's
    # a kept class the student does not have (-1) has student probability 0: its mass joins the rest bin
    folded = kd_loss(s, torch.tensor([[0, -1], [2, -1], [4, -1]]), vals, y, 3.0, 1.0, 0.0, soft_rest=rest)
    merged = kd_loss(s, idx[:, :1], vals[:, :1], y, 3.0, 1.0, 0.0, soft_rest=rest + vals[:, 1])
    assert torch.allclose(folded, merged)
    with pytest.raises(ValueError, match="target 'x' is not one of"):
        kd_loss(s, idx, vals, y, 3.0, target="x")


def test_effective_weights_and_kept_mass_metrics():
    g = _tl("global", ["x", "y", "z"], ["s1", "s2", "s3"], [[2.0, 0.0, -1.0]] * 3, k=2)
    r = _tl("EU_SW", ["x", "y", "z"], ["s1", "s2", "s3"], [[0.0, 2.0, 1.0]] * 3, "EU_SW", k=2)
    e = _tl("EU_CORE", ["x", "y", "z"], ["s1", "s2", "s3"], [[0.0, 2.0, 1.0]] * 3, k=2)
    specs = [TeacherSpec(g, 0.4), TeacherSpec(r, 0.4, {"EU_SW"}), TeacherSpec(e, 0.2, {"EU_SW", "EU_N"})]
    regions = ["EU_SW", "EU_N", "OTHER"]
    sl = combine_soft_labels(specs, ["s1", "s2", "s3"], regions, 3.0, k=2)
    m = soft_label_metrics(sl, specs, regions)
    table = {tuple(row["teachers"]): (row["weights"], row["samples"]) for row in m["effective_weights"]}
    assert table == {
        ("global", "EU_SW", "EU_CORE"): ({"global": 0.4, "EU_SW": 0.4, "EU_CORE": 0.2}, 1),
        ("global", "EU_CORE"): ({"global": 0.666667, "EU_CORE": 0.333333}, 1),
        ("global",): ({"global": 1.0}, 1),
    }
    assert np.isclose(m["topk_mass_mean"], sl.kept_mass.mean()) and np.isclose(m["topk_mass_min"], sl.kept_mass.min())
    # s3: the global teacher alone, which stored x and y: exact, no shortfall
    p3 = _softmax([2.0, 0.0, -1.0], 3.0)
    assert np.allclose(np.sort(sl.values[2])[::-1], [p3[0], p3[1]], rtol=1e-3) and np.isclose(sl.rest[2], p3[2])
    # s1: y and z kept by EU_SW/EU_CORE, x by global; the kept x, y are in the others' tails:
    # each kept value is short of the dense mix by at most the bound, never more
    dense = 0.4 * p3 + 0.6 * _softmax([0.0, 2.0, 1.0], 3.0)
    kept = dict(zip(sl.indices[0].tolist(), sl.values[0].tolist(), strict=True))
    shortfall = sum(dense[c] - v for c, v in kept.items())
    assert all(v <= dense[c] + 1e-6 for c, v in kept.items())
    assert 0 < shortfall <= m["kept_mass_shortfall_bound_max"] + 1e-6
