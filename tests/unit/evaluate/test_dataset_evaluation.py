import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from shared.data.fetch import FetchPolicy
from shared.data.image_cache import cache_images
from shared.data.ingest import ingest, iter_jsonl_source
from shared.evaluate.evaluation import classification_metrics, confusion_matrix_top, predict, report_html
from shared.vision.augment import build_eval_transform
from shared.vision.image_dataset import CachedImageDataset, class_balanced_sample_weights, class_list


@pytest.fixture(scope="module")
def cached(sample_catalogue, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    recs = ingest(iter_jsonl_source(sample_catalogue / "records.jsonl")).records
    rep = cache_images(recs, cache, resize=40, policy=FetchPolicy(allow_local_paths=True))
    return rep.cached, str(cache)


def test_dataset_items_and_errors(cached):
    recs, cache = cached
    classes = class_list(recs)
    ds = CachedImageDataset(recs, cache, classes, build_eval_transform({}, 32))
    x, y, i = ds[3]
    assert x.shape == (3, 32, 32) and classes[y] == recs[3]["taxon"] and i == 3
    first = next(r for r in recs if r["taxon"] == classes[0])
    with pytest.raises(ValueError, match=f"record {first['image_id']}: taxon"):
        CachedImageDataset(recs, cache, classes[1:], build_eval_transform({}, 32))
    ds2 = CachedImageDataset(recs, cache, classes[1:], build_eval_transform({}, 32), label_missing="ignore")
    assert (ds2.labels == -1).sum() == sum(r["taxon"] == classes[0] for r in recs)
    ds.path(0).unlink()
    with pytest.raises(RuntimeError, match=f"record {recs[0]['image_id']}: cannot read cached image"):
        ds[0]


def test_balanced_weights():
    recs = [{"taxon": "a"}] * 3 + [{"taxon": "b"}]
    w = class_balanced_sample_weights(recs)
    assert w[:3].sum() == pytest.approx(w[3])


def test_metrics_hand_computed():
    logits = np.array([[3, 1, 0, 0, 0, 0], [0, 3, 1, 0, 0, 0], [4, 3, -1, 2, 1, 5], [1, 0, 0, 0, 0, 0]], float)
    labels = np.array([0, 2, 2, -1])
    m = classification_metrics(logits, labels, list("abcdef"), ["EU_SW", "EU_SW", "EU_NORTH", "EU_NORTH"])
    assert m["top1_accuracy"] == 0.25 and m["top5_accuracy"] == 0.5
    assert m["per_region"] == {"EU_NORTH": 0.0, "EU_SW": 0.5}
    assert m["per_class_recall"] == {"a": 1.0, "c": 0.0}
    assert m["share_classes_recall_above_threshold"] == 0.5 and m["unknown_label_samples"] == 1
    lsm = logits[:3] - np.log(np.exp(logits[:3]).sum(1, keepdims=True))
    assert m["loss"] == pytest.approx(-(lsm[0, 0] + lsm[1, 2] + lsm[2, 2]) / 3)
    names, cm = confusion_matrix_top(logits, labels, list("abcdef"), top_n=1)
    assert names == ["c", "other"] and cm == [[0, 2], [0, 2]]
    assert "Classes with the lowest recall" in report_html(m, "t")
    with pytest.raises(ValueError):
        classification_metrics(np.zeros((0, 3)), np.zeros(0, int), list("abc"))


def test_predict_matches_model(cached):
    recs, cache = cached
    classes = class_list(recs)
    ds = CachedImageDataset(recs[5:15], cache, classes, build_eval_transform({}, 32))  # recs[0] lost its file above
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, len(classes)))
    logits, labels = predict(model, DataLoader(ds, batch_size=4))
    assert logits.shape == (10, len(classes)) and list(labels) == list(ds.labels[:10])
    x = torch.stack([ds[i][0] for i in range(10)])
    assert np.allclose(logits, model(x).detach().numpy(), atol=1e-5)
