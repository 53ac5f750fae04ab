"""Publishing releases (shared/release/): first publish, a better candidate published, a worse
one refused with both models' figures, force with a reason, rollback, class sets that differ,
on a local path and on the GCS emulator (where a pointer changed meanwhile = a concurrent publish).

The models' answers are made up (score_checkpoint replaced: a checkpoint's `quality` is the
share of images it gets right), so each test knows which model is better; the real inference
path is in test_publish_scores_real_checkpoints."""

import json

import numpy as np
import pytest
import torch

from shared.io.checkpoint import load_checkpoint, save_checkpoint
from shared.release import publish as pub
from shared.release.decision import Scored, classes_digest, decide
from shared.release.pointer import list_versions, read_pointer, rollback, write_pointer
from shared.release.store import AlreadyExists, ConcurrentUpdate, ReleaseStoreError, open_store
from tests.gcs_emulator import gcs_emulator

CLASSES = [f"Species {i}" for i in range(8)]
MARGINS = {"top1": 0.005, "ece": 0.02, "coverage": 0.01}
RECORDS = [{"taxon": c, "image_id": f"{c}-{k}"} for c in [*CLASSES, "Species 8", "Species 9"] for k in range(25)]


def fake_score(checkpoint, records, cache_dir):
    """Logits where the right class wins on a `quality` share of the images (the same images each call)."""
    ck = load_checkpoint(checkpoint)
    classes, q = list(ck["classes"]), float(ck["quality"])
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index.get(r["taxon"], -1) for r in records], dtype=np.int64)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(len(records), len(classes)))
    right = rng.random(len(records)) < q
    for i, label in enumerate(labels):
        if label >= 0 and right[i]:
            logits[i, label] += 6.0
    return Scored(logits.astype(np.float32), labels, classes, 1.0)


@pytest.fixture(autouse=True)
def made_up_answers(monkeypatch, request):
    if request.node.name != "test_publish_scores_real_checkpoints":
        monkeypatch.setattr(pub, "score_checkpoint", fake_score)


def student(path, quality, classes=CLASSES):
    save_checkpoint(
        path, torch.nn.Linear(2, len(classes)), model_name="m", classes=classes, image_size=32, quality=quality
    )
    return str(path)


def bundle(tmp_path, tag="a"):
    d = tmp_path / f"bundle-{tag}"
    d.mkdir()
    files = {
        "model.json": "{}",
        "group1-shard1of1.bin": "w",
        "labels.json": "[]",
        "index.html": "<html>",
        "tf.min.js": "//",
        "tfjs-backend-wasm.wasm": "\0asm",
    }
    for name, text in files.items():
        (d / name).write_text(text)
    return str(d)


def publish(tmp_path, uri, ckpt, force=False, reason="", tag="a"):
    settings = {"margins": MARGINS, "force": force, "reason": reason}
    record = {"run": f"run-{tag}", "git_commit": "abc", "headline": {"test_top1": 0.5}, "student_checkpoint": ckpt}
    return pub.publish_release(
        uri=uri,
        bundle_dir=bundle(tmp_path, tag),
        candidate_ckpt=ckpt,
        test_records=RECORDS,
        cache_dir="",
        settings=settings,
        record=record,
        target_precision=0.95,
        log=lambda line: None,
    )


def test_first_publish_then_better_published_then_worse_refused_with_both_figures(tmp_path):
    uri = str(tmp_path / "releases")
    first = publish(tmp_path, uri, student(tmp_path / "a.pt", 0.6), tag="a")
    assert first["published"] and first["decision"]["decision"] == "published: the first release"
    store = open_store(uri)
    release = json.loads((tmp_path / "releases" / "models" / first["version"] / "release.json").read_text())
    assert release["classes_digest"] == classes_digest(CLASSES) and release["run"] == "run-a"
    assert {f["name"]: f["content_type"] for f in release["files"]}["tfjs-backend-wasm.wasm"] == "application/wasm"
    assert read_pointer(store)[0]["version"] == first["version"]

    better = publish(tmp_path, uri, student(tmp_path / "b.pt", 0.9), tag="b")
    assert better["published"] and better["comparison"]["candidate"]["top1"] > better["comparison"]["current"]["top1"]
    assert read_pointer(store)[0]["version"] == better["version"]

    worse = publish(tmp_path, uri, student(tmp_path / "c.pt", 0.4), tag="c")
    assert not worse["published"] and worse["decision"]["decision"].startswith("refused")
    top1 = next(c for c in worse["decision"]["checks"] if c["figure"] == "top1")
    assert not top1["passed"] and top1["candidate"] < top1["current"] - MARGINS["top1"]
    assert worse["comparison"]["candidate"]["images"] == worse["comparison"]["current"]["images"] == 200
    assert read_pointer(store)[0]["version"] == better["version"]  # the better one stays current
    assert len(list_versions(store)) == 2


def test_force_needs_a_reason_and_is_recorded(tmp_path):
    uri = str(tmp_path / "releases")
    publish(tmp_path, uri, student(tmp_path / "a.pt", 0.9), tag="a")
    with pytest.raises(ValueError, match="release.reason"):
        publish(tmp_path, uri, student(tmp_path / "b.pt", 0.3), force=True, tag="b")
    forced = publish(tmp_path, uri, student(tmp_path / "c.pt", 0.3), force=True, reason="hotfix labels", tag="c")
    assert forced["published"] and forced["decision"]["forced"] and "hotfix labels" in forced["decision"]["decision"]
    pointer, _ = read_pointer(open_store(uri))
    assert pointer["version"] == forced["version"] and pointer["reason"] == "hotfix labels"


def test_rollback_goes_back_like_an_undo_and_to_a_named_version(tmp_path):
    uri = str(tmp_path / "releases")
    store = open_store(uri)
    with pytest.raises(ReleaseStoreError, match="nothing has been released"):
        rollback(store)
    v = [
        publish(tmp_path, uri, student(tmp_path / f"{t}.pt", q), tag=t)["version"] for t, q in (("a", 0.5), ("b", 0.7))
    ]
    v.append(publish(tmp_path, uri, student(tmp_path / "c.pt", 0.9), tag="c")["version"])
    assert rollback(store)["version"] == v[1]
    assert rollback(store)["version"] == v[0]
    with pytest.raises(ReleaseStoreError, match="nothing to roll back to"):
        rollback(store)
    assert rollback(store, v[2], reason="back to the newest")["version"] == v[2]
    assert [r["version"] for r in list_versions(store) if r["current"]] == [v[2]]
    with pytest.raises(ReleaseStoreError, match="holds no release"):
        rollback(store, "19990101T000000Z-000000")


def test_class_sets_that_differ_are_compared_on_the_shared_classes(tmp_path):
    uri = str(tmp_path / "releases")
    publish(tmp_path, uri, student(tmp_path / "a.pt", 0.6), tag="a")
    grown = [*CLASSES[1:], "Species 8", "Species 9"]  # drops Species 0, adds two
    r = publish(tmp_path, uri, student(tmp_path / "b.pt", 0.9, grown), tag="b")
    cmp_ = r["comparison"]
    assert cmp_["shared_classes"] == 7 and cmp_["dropped_class_count"] == 1
    assert cmp_["candidate"]["images"] == cmp_["current"]["images"] == 7 * 25
    assert cmp_["new_classes"]["classes"] == 2 and cmp_["new_classes"]["images"] == 50
    assert r["published"] and r["candidate"]["classes_digest"] == classes_digest(grown)


def test_no_shared_class_is_refused_unless_forced():
    assert not decide({"images": 0}, {"images": 0}, MARGINS)["publish"]
    assert decide({"images": 0}, None, MARGINS, force=True, reason="new taxonomy")["publish"]


def test_a_version_is_never_overwritten(tmp_path):
    store = open_store(str(tmp_path / "r"))
    store.create("models/v/model.json", b"{}", "application/json", "x")
    with pytest.raises(AlreadyExists):
        store.create("models/v/model.json", b"{}", "application/json", "x")


def test_local_pointer_changed_meanwhile_fails_the_second_writer(tmp_path):
    store = open_store(str(tmp_path / "r"))
    write_pointer(store, "v1", None, None, "publish")
    old, gen = read_pointer(store)
    write_pointer(store, "v2", old, gen, "publish")  # the other run wins
    with pytest.raises(ConcurrentUpdate, match="another publish"):
        write_pointer(store, "v3", old, gen, "publish")
    assert read_pointer(store)[0]["version"] == "v2"


def test_gcs_publish_headers_and_concurrent_publish(tmp_path, monkeypatch):
    from shared.io.gcs import client

    with gcs_emulator("releases", preconditions=True):
        uri = "gs://releases/plantid"
        first = publish(tmp_path, uri, student(tmp_path / "a.pt", 0.6), tag="a")
        bucket = client().bucket("releases")
        wasm = bucket.get_blob(f"plantid/models/{first['version']}/tfjs-backend-wasm.wasm")
        assert wasm.content_type == "application/wasm"
        assert wasm.cache_control == "public, max-age=31536000, immutable"
        pointer = bucket.get_blob("plantid/current.json")
        assert pointer.cache_control == "no-cache" and pointer.content_type == "application/json"
        assert json.loads(pointer.download_as_bytes())["version"] == first["version"]

        # another run repoints current.json while this one is comparing: this one must lose
        compare = pub.compare_with_current

        def racing(*args, **kwargs):
            store = open_store(uri)
            old, gen = read_pointer(store)
            write_pointer(store, first["version"], old, gen, "rollback", reason="the other run")
            return compare(*args, **kwargs)

        monkeypatch.setattr(pub, "compare_with_current", racing)
        with pytest.raises(ConcurrentUpdate, match="another publish"):
            publish(tmp_path, uri, student(tmp_path / "b.pt", 0.9), tag="b")
        assert json.loads(bucket.get_blob("plantid/current.json").download_as_bytes())["reason"] == "the other run"
        monkeypatch.setattr(pub, "compare_with_current", compare)
        worse = publish(tmp_path, uri, student(tmp_path / "c.pt", 0.3), tag="c")
        assert not worse["published"]
        assert [r["current"] for r in list_versions(open_store(uri))].count(True) == 1


def test_publish_scores_real_checkpoints(cached_splits, tmp_path):
    """The real inference path: the same tiny student published twice; the second is compared
    with the first on the same images (identical figures: not worse, published)."""
    import timm

    from shared.vision.image_dataset import class_list

    classes = class_list(cached_splits["train"])
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=len(classes))
    ckpt = tmp_path / "s.pt"
    save_checkpoint(ckpt, model, model_name="test_efficientnet", classes=classes, image_size=32, eval_resize=36)
    uri = str(tmp_path / "releases")
    kw = dict(
        uri=uri,
        candidate_ckpt=str(ckpt),
        test_records=cached_splits["test"],
        cache_dir=cached_splits["cache_dir"],
        settings={"margins": MARGINS},
        record={"run": "r", "student_checkpoint": str(ckpt), "headline": {}},
        target_precision=0.95,
        log=lambda line: None,
    )
    assert pub.publish_release(bundle_dir=bundle(tmp_path, "a"), **kw)["published"]
    second = pub.publish_release(bundle_dir=bundle(tmp_path, "b"), **kw)
    cmp_ = second["comparison"]
    assert second["published"] and cmp_["candidate"] == cmp_["current"]
    assert cmp_["candidate"]["images"] == len(cached_splits["test"])


def test_the_release_command_lists_and_rolls_back(tmp_path, capsys):
    import pipeline

    uri = str(tmp_path / "releases")
    v1 = publish(tmp_path, uri, student(tmp_path / "a.pt", 0.5), tag="a")["version"]
    v2 = publish(tmp_path, uri, student(tmp_path / "b.pt", 0.9), tag="b")["version"]
    args = ["release", "--config", "config/local.yaml", "--uri", uri]
    capsys.readouterr()  # what publishing printed is not the listing
    assert pipeline.main([*args, "--list"]) == 0
    out = capsys.readouterr().out
    # by version, not by line position: another test's background thread may write to stdout too
    row = {v: next(line for line in out.splitlines() if v in line) for v in (v1, v2)}
    assert out.index(v1) < out.index(v2)  # in publication order
    assert f"* {v2}" in row[v2] and "*" not in row[v1] and "test_top1 0.5" in row[v2]
    assert pipeline.main([*args, "--rollback", "--reason", "bad labels"]) == 0
    assert f"points to {v1} (bad labels)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="nothing to roll back to"):
        pipeline.main([*args, "--rollback"])
