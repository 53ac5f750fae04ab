"""Evaluation metrics (shared/evaluate/evaluation.py) checked against torch references."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from shared.evaluate.evaluation import classification_metrics, confusion_matrix_top, predict, report_html


def reference(logits: np.ndarray, labels: np.ndarray, classes: list[str], threshold: float = 0.6) -> dict:
    t, y = torch.from_numpy(logits).double(), torch.from_numpy(labels)
    top = t.topk(min(5, t.shape[1]), dim=1).indices
    hit1 = top[:, 0] == y
    known = y >= 0
    recall = {classes[c]: float(hit1[y == c].double().mean()) for c in sorted(set(y[known].tolist()))}
    return {
        "top1_accuracy": float(hit1.double().mean()),
        "top5_accuracy": float((top == y[:, None]).any(1).double().mean()),
        "loss": float(F.cross_entropy(t, y, ignore_index=-1)),
        "per_class_recall": recall,
        "share_classes_recall_above_threshold": np.mean([v > threshold for v in recall.values()]),
    }


def random_case(n: int, c: int, seed: int, unknown: float = 0.1):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(0, 1, (n, c)).astype(np.float32)
    logits[np.arange(n), labels] += rng.normal(1.5, 1.0, n).astype(np.float32)  # a half-decent model
    labels[rng.random(n) < unknown] = -1
    return logits, labels, [f"sp{i:02d}" for i in range(c)]


@pytest.mark.parametrize("n,c", [(300, 40), (5000, 7)])  # 5000 > the row chunk: crosses a boundary
def test_metrics_match_torch(n, c):
    logits, labels, classes = random_case(n, c, seed=n)
    regions = ["EU_SW" if i % 3 else "EU_NORTH" for i in range(n)]
    m = classification_metrics(logits, labels, classes, regions)
    ref = reference(logits, labels, classes)
    for key in ("top1_accuracy", "top5_accuracy", "loss", "share_classes_recall_above_threshold"):
        assert m[key] == pytest.approx(ref[key], abs=1e-9), key
    assert m["per_class_recall"] == pytest.approx(ref["per_class_recall"])
    assert m["num_classes_evaluated"] == len(ref["per_class_recall"])
    assert m["unknown_label_samples"] == int((labels == -1).sum()) > 0
    top1 = logits.argmax(1) == labels
    assert m["per_region"]["EU_NORTH"] == pytest.approx(top1[::3].mean())
    assert m["samples"] == n


def test_threshold_is_strict_and_configurable():
    # class a: 3/5 = 0.6 recall (not above 0.6), class b: 1/1
    logits = np.array([[1, 0]] * 3 + [[0, 1]] * 2 + [[0, 1]], float)
    labels = np.array([0, 0, 0, 0, 0, 1])
    m = classification_metrics(logits, labels, ["a", "b"])
    assert m["per_class_recall"] == {"a": 0.6, "b": 1.0}
    assert m["share_classes_recall_above_threshold"] == 0.5
    assert (
        classification_metrics(logits, labels, ["a", "b"], recall_threshold=0.5)["share_classes_recall_above_threshold"]
        == 1.0
    )


def test_fewer_than_five_classes_and_unknown_labels():
    logits = np.array([[2, 1, 0], [0, 2, 1], [1, 0, 2], [5, 0, 0]], np.float32)
    labels = np.array([1, 1, -1, 0])
    m = classification_metrics(logits, labels, ["a", "b", "c"])
    assert m["top1_accuracy"] == 0.5  # samples 1 and 3
    assert m["top5_accuracy"] == 0.75  # top-3 holds every known label; the -1 sample is wrong
    assert m["per_class_recall"] == {"a": 1.0, "b": 0.5}
    allunk = classification_metrics(logits, np.full(4, -1), ["a", "b", "c"])
    assert allunk["top1_accuracy"] == 0 and allunk["top5_accuracy"] == 0 and np.isnan(allunk["loss"])
    assert allunk["per_class_recall"] == {} and allunk["share_classes_recall_above_threshold"] == 0.0


def test_bad_inputs_are_named():
    logits = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"sample 1: label 4 is outside -1..3"):
        classification_metrics(logits, np.array([0, 4, 1]), list("abcd"))
    with pytest.raises(ValueError, match=r"logits have 4 columns but there are 3 classes"):
        classification_metrics(logits, np.array([0, 1, 1]), list("abc"))
    with pytest.raises(ValueError, match=r"regions has 2 entries for 3 samples"):
        classification_metrics(logits, np.array([0, 1, 1]), list("abcd"), ["x", "y"])
    with pytest.raises(ValueError, match=r"do not match"):
        classification_metrics(logits, np.array([0, 1]), list("abcd"))
    nan = logits.copy()
    nan[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"sample 2: non-finite logits"):
        classification_metrics(nan, np.array([0, 1, 1]), list("abcd"))


def test_confusion_matrix_counts_every_sample_once():
    logits, labels, classes = random_case(400, 12, seed=5)
    names, cm = confusion_matrix_top(logits, labels, classes, top_n=4)
    cm = np.array(cm)
    assert cm.shape == (5, 5) and names[-1] == "other" and cm.sum() == 400
    counts = np.bincount(labels[labels >= 0], minlength=12)
    order = sorted(range(12), key=lambda c: (-counts[c], c))[:4]
    assert names[:4] == [classes[c] for c in order]  # the most frequent true classes, most frequent first
    pred = logits.argmax(1)
    for r, c in enumerate(order):
        assert cm[r].sum() == counts[c]
        assert cm[r, r] == int(((labels == c) & (pred == c)).sum())
    assert cm[4].sum() == 400 - counts[order].sum()  # the rest, -1 labels included
    names_all, cm_all = confusion_matrix_top(logits, labels, classes, top_n=50)
    assert len(names_all) == 13 and np.trace(np.array(cm_all)[:12, :12]) == int((pred == labels).sum())


def test_report_html_is_self_contained_and_lists_worst_classes():
    logits, labels, classes = random_case(300, 40, seed=2)
    m = classification_metrics(logits, labels, classes, ["EU_SW", "EU_<N>"] * 150)
    page = report_html(m, "Teacher <global> & co")
    assert page.startswith("<!doctype html>") and "Teacher &lt;global&gt; &amp; co" in page
    assert "EU_&lt;N&gt;" in page and "<N>" not in page
    assert f"{m['top1_accuracy']:.4f}" in page and f"{m['top5_accuracy']:.4f}" in page
    worst = sorted(m["per_class_recall"].items(), key=lambda kv: (kv[1], kv[0]))[:3]
    shown = re.findall(r"<tr><td>(sp\d\d)</td>", page)
    assert shown[:3] == [c for c, _ in worst]
    assert not re.search(r"(src|href)=\"?https?:", page)


def test_predict_streams_batches_and_handles_amp():
    torch.manual_seed(0)
    x = torch.randn(37, 10)
    y = torch.randint(-1, 6, (37,))
    loader = DataLoader(TensorDataset(x, y, torch.arange(37)), batch_size=8)
    model = torch.nn.Linear(10, 6)
    logits, labels = predict(model, loader)
    assert logits.dtype == np.float32 and logits.shape == (37, 6) and labels.dtype == np.int64
    assert np.allclose(logits, model(x).detach().numpy(), atol=1e-5) and labels.tolist() == y.tolist()
    amp_logits, _ = predict(model, loader, amp=True)  # bf16 autocast on CPU
    assert amp_logits.dtype == np.float32 and np.allclose(amp_logits, logits, atol=0.1)
    assert not model.training


def test_inference_precision_and_workers_rules():
    """shared/evaluate/inference.py: fp16 autocast on CUDA, float32 on the CPU unless asked; worker
    processes by default only where a GPU waits for them; a bad value is named."""
    from shared.evaluate.inference import inference_dtype, inference_loader, inference_workers, usable_cpus

    assert inference_dtype("cpu") is None and inference_dtype("cpu", "fp32") is None
    assert inference_dtype("cpu", "bf16") == torch.bfloat16 and inference_dtype("cpu", "fp16") == torch.float16
    assert inference_dtype("cuda:0") == torch.float16 and inference_dtype("cuda", "fp32") is None
    with pytest.raises(ValueError, match="precision: 'int8'"):
        inference_dtype("cpu", "int8")
    assert inference_workers("cpu") == 0 and inference_workers("cpu", 3) == 3
    assert 1 <= inference_workers("cuda") <= min(8, usable_cpus())
    with pytest.raises(ValueError, match="num_workers"):
        inference_workers("cpu", -1)
    loader = inference_loader(TensorDataset(torch.zeros(5, 2)), 2, "cuda", num_workers=2)
    assert loader.num_workers == 2 and loader.pin_memory and not loader.persistent_workers
    assert not inference_loader(TensorDataset(torch.zeros(5, 2)), 2, "cpu").pin_memory


def test_evaluate_checkpoint_with_worker_processes_matches_one_process(cached_splits, tmp_path):
    """The multi-worker loader keeps the order: the same logits, labels and metrics as 0 workers."""
    import timm

    from shared.evaluate.evaluation import evaluate_checkpoint
    from shared.io.checkpoint import save_checkpoint
    from shared.vision.image_dataset import class_list

    torch.manual_seed(0)
    classes = class_list(cached_splits["train"])
    model = timm.create_model("test_resnet", pretrained=False, num_classes=len(classes))
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, model, model_name="test_resnet", classes=classes, image_size=32, eval_resize=36)
    test, cache = cached_splits["test"], cached_splits["cache_dir"]
    one = evaluate_checkpoint(str(ckpt), test, cache, batch_size=8, num_workers=0)
    two = evaluate_checkpoint(str(ckpt), test, cache, batch_size=8, num_workers=2)
    assert np.array_equal(one[1], two[1]) and np.array_equal(one[2], two[2]) and one[0] == two[0]
    assert one[0]["samples"] == len(test) and one[1].shape == (len(test), len(classes))


def test_a_student_trained_on_its_rendition_is_scored_on_it(cached_splits, tmp_path):
    """calibrate and the gate score the student on the files training validated it on (the
    cache's student rendition), and a record without one is an error naming it."""
    import shutil

    import timm

    from shared.evaluate.evaluation import evaluate_checkpoint, records_as_trained
    from shared.io.checkpoint import save_checkpoint
    from shared.vision.image_dataset import class_list

    classes = class_list(cached_splits["train"])
    model = timm.create_model("test_resnet", pretrained=False, num_classes=len(classes))
    ckpt = tmp_path / "m.pt"
    config = {"data": {"student_rendition": 24}}
    save_checkpoint(ckpt, model, model_name="test_resnet", classes=classes, image_size=32, config=config)
    test, cache = cached_splits["test"][:4], cached_splits["cache_dir"]
    # each record's rendition: here a copy of its main file under another name
    rendition = []
    for r in test:
        copy = f"{r['cache_path']}.student.jpg"
        shutil.copyfile(f"{cache}/{r['cache_path']}", f"{cache}/{copy}")
        rendition.append({**r, "student_cache_path": copy, "student_resize": 24})
    assert [r["cache_path"] for r in records_as_trained({"config": config}, rendition)] == [
        r["student_cache_path"] for r in rendition
    ]
    assert records_as_trained({"config": {}}, test) == test  # a teacher: the main files
    assert evaluate_checkpoint(str(ckpt), rendition, cache)[0]["samples"] == 4
    with pytest.raises(ValueError, match=str(test[0]["image_id"])):
        evaluate_checkpoint(str(ckpt), test, cache)
