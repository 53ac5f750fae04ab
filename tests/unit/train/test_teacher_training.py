import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from shared.config.pipeline import ConfigError
from shared.config.teacher import load_teacher_config
from shared.io.checkpoint import build_model, load_checkpoint
from shared.io.records import write_jsonl
from shared.train.distributed import DistributedWeightedSampler
from shared.train.loop import NonFiniteLossError, TrainSettings, fit
from shared.train.pretrained import create_model
from shared.train.teacher import map_head_by_class, train_teacher
from shared.vision.image_dataset import class_balanced_sample_weights
from tests.conftest import TINY_TEACHER

ROOT = Path(__file__).resolve().parents[3]


def tiny(**over):
    cfg = copy.deepcopy(TINY_TEACHER)
    for dotted, v in over.items():
        node = cfg
        *path, last = dotted.split(".")
        for k in path:
            node = node.setdefault(k, {})
        node[last] = v
    return cfg


@pytest.mark.parametrize("name", ["teacher_global", "teacher_regional", "teacher_eu_core"])
def test_plan_configs_parse_and_build_vit_b16_384(name):
    cfg = load_teacher_config(ROOT / "config" / f"{name}.yaml")
    assert cfg["model"]["name"] == "vit_base_patch16_384" and cfg["data"]["image_size"] == 384
    assert cfg["augmentation"]["train"]["crop"] == 384
    if name == "teacher_regional":
        assert cfg["training"]["learning_rate"] == 2e-5 and cfg["data"]["region_filter"] == "EU_SW"


def test_vit_b16_384_builds_with_class_count():
    cfg = load_teacher_config(ROOT / "config" / "teacher_global.yaml")
    torch.set_num_threads(2)
    m = create_model(cfg["model"]["name"], 5914, cfg["regularization"]["dropout"], 384)
    assert m.get_classifier().out_features == 5914
    with torch.no_grad():
        assert m(torch.zeros(1, 3, 384, 384)).shape == (1, 5914)


def test_unknown_and_bad_keys_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"training.lerning_rate: unknown key \(did you mean learning_rate\?\)"):
        load_teacher_config({"training": {"lerning_rate": 1e-3}})
    with pytest.raises(ConfigError, match=r"augmentation.train.vertcal_flip: unknown key"):
        load_teacher_config({"augmentation": {"train": {"vertcal_flip": 0.1}}})
    with pytest.raises(ConfigError, match="training.optimizer"):
        load_teacher_config({"training": {"optimizer": "adagrad9"}})
    with pytest.raises(ConfigError, match="training.batch_size: expected a number"):
        load_teacher_config({"training": {"batch_size": "four"}})
    assert load_teacher_config({"training": {"learning_rate": "1e-4"}})["training"]["learning_rate"] == 1e-4


def test_head_mapping_by_class_name():
    torch.manual_seed(0)
    src = create_model("test_resnet", 4)
    src_classes = ["a", "b", "c", "d"]
    dst = create_model("test_resnet", 3)
    fresh = dst.state_dict()["fc.weight"].clone()
    info = map_head_by_class(dst, src.state_dict(), src_classes, ["c", "new", "a"])
    w_src, w_dst = src.state_dict()["fc.weight"], dst.state_dict()["fc.weight"]
    assert torch.equal(w_dst[0], w_src[2]) and torch.equal(w_dst[2], w_src[0])
    assert torch.equal(w_dst[1], fresh[1])  # a class new to the regional teacher keeps its fresh row
    assert info == {"head_rows_mapped": 2, "head_rows_new": 1}
    assert torch.equal(dst.state_dict()["conv1.0.weight"], src.state_dict()["conv1.0.weight"])
    with pytest.raises(ValueError, match="architecture does not match"):
        map_head_by_class(create_model("test_efficientnet", 3), src.state_dict(), src_classes, ["a", "b", "c"])


def test_teacher_learns_and_checkpoints(cached_splits, tmp_path):
    s = train_teacher(
        tiny(**{"training.epochs": 6}),
        cached_splits["train"],
        cached_splits["val"],
        cached_splits["cache_dir"],
        str(tmp_path),
    )
    chance = 1.0 / s["num_classes"]
    assert s["best_metrics"]["top1_acc"] > 4 * chance
    assert s["trained_from_scratch"] and s["epochs_run"] == 6
    ck = load_checkpoint(tmp_path / "best_model.pt")
    assert ck["model_name"] == "test_resnet" and len(ck["classes"]) == s["num_classes"]
    build_model(ck)
    assert (tmp_path / "logs").is_dir() and (tmp_path / "history.json").exists()
    # a regional teacher initialised from it maps its head by class name
    region = [r for r in cached_splits["train"] if r["region"] == "EU_SW"]
    rs = train_teacher(
        tiny(**{"training.epochs": 1}),
        region,
        cached_splits["val"],
        cached_splits["cache_dir"],
        str(tmp_path / "regional"),
        init_from=str(tmp_path / "best_model.pt"),
    )
    assert not rs["trained_from_scratch"] and rs["init"]["head_rows_mapped"] == rs["num_classes"]


def _toy(n=64, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % c
    x = torch.randn(n, 3, 8, 8, generator=g) * 0.3 + y[:, None, None, None].float()
    return torch.utils.data.TensorDataset(x, y, torch.arange(n))


def _fit(tmp, settings, model=None, **kw):
    torch.manual_seed(0)
    model = model or torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4))
    meta = {"model_name": "toy", "classes": list("abcd"), "image_size": 8}
    return model, fit(model, _toy(), _toy(32, seed=1), settings, tmp, checkpoint_meta=meta, log=lambda m: None, **kw)


def test_training_keys_have_effects(tmp_path):
    base = dict(epochs=2, batch_size=16, lr=0.05, early_stopping=False)
    _, r = _fit(tmp_path / "a", TrainSettings(**base))
    assert r.global_step == 8 and r.epochs_run == 2
    _, r_acc = _fit(tmp_path / "b", TrainSettings(**base, grad_accum_steps=2))
    assert r_acc.global_step == 4
    _, r_ls = _fit(tmp_path / "c", TrainSettings(**base, label_smoothing=0.3))
    assert r_ls.history[0]["train_loss"] != pytest.approx(r.history[0]["train_loss"])
    m1, _ = _fit(tmp_path / "d", TrainSettings(**{**base, "epochs": 1}))
    m2, _ = _fit(tmp_path / "e", TrainSettings(**{**base, "epochs": 1}, grad_clip=0.01))
    assert not torch.allclose(m1[1].weight, m2[1].weight)
    m3, _ = _fit(tmp_path / "f", TrainSettings(**{**base, "epochs": 1}, weight_decay=5.0))
    assert m3[1].weight.norm() < m1[1].weight.norm()
    _, r_w = _fit(tmp_path / "g", TrainSettings(**base, warmup_epochs=1))
    # cosine over 2 epochs is half way down after epoch 1; with 1 warmup epoch it has just peaked
    assert r.history[0]["lr"] == pytest.approx(0.025, rel=0.01)
    assert r_w.history[0]["lr"] == pytest.approx(0.05, rel=0.01)
    _, r_mx = _fit(tmp_path / "h", TrainSettings(**base, mixup_alpha=1.0, mixup_prob=1.0, num_classes=4))
    assert r_mx.history[0]["train_loss"] != pytest.approx(r.history[0]["train_loss"])


def test_early_stopping_stops(tmp_path):
    # lr 0: the metric never improves after the first epoch
    _, r = _fit(
        tmp_path, TrainSettings(epochs=10, batch_size=16, lr=0.0, patience=2, optimizer="sgd", weight_decay=0.0)
    )
    assert r.stopped_early and r.epochs_run == 3


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    calls = {"n": 0}

    def loss_fn(logits, y, idx):
        calls["n"] += 1
        loss = torch.nn.functional.cross_entropy(logits, y)
        return loss * float("nan") if calls["n"] > 4 else loss

    s = TrainSettings(epochs=3, batch_size=16, lr=0.05, early_stopping=False)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 1 step 4"):
        _fit(tmp_path, s, loss_fn=loss_fn)
    state = torch.load(tmp_path / "last_checkpoint.pt", weights_only=False)
    assert state["epoch"] == 0 and state["global_step"] == 4


def _run_cli(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "shared.train.teacher", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **kw,
    )


def _cli_args(cached_splits, tmp_path, out, epochs):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny(**{"training.epochs": epochs})))
    write_jsonl(tmp_path / "train.jsonl", cached_splits["train"])
    write_jsonl(tmp_path / "val.jsonl", cached_splits["val"])
    return [
        "--config",
        str(cfg),
        "--train-jsonl",
        str(tmp_path / "train.jsonl"),
        "--val-jsonl",
        str(tmp_path / "val.jsonl"),
        "--cache-dir",
        cached_splits["cache_dir"],
        "--out-dir",
        str(out),
        "--summary-json",
        str(out / "summary.json"),
    ]


def test_resume_after_kill_same_step_count(cached_splits, tmp_path):
    full = _run_cli(_cli_args(cached_splits, tmp_path, tmp_path / "full", 5))
    assert full.wait(300) == 0, full.stdout.read().decode()[-2000:]
    reference = json.loads((tmp_path / "full" / "summary.json").read_text())
    out = tmp_path / "killed"
    p = _run_cli(_cli_args(cached_splits, tmp_path, out, 5))
    deadline = time.time() + 120
    # the epoch's history is written just after its checkpoint: wait for both (on a loaded machine
    # a kill can land between the two)
    while (
        not ((out / "last_checkpoint.pt.sha256").exists() and (out / "history.json").exists())
        and time.time() < deadline
    ):
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done_before = json.loads((out / "history.json").read_text())
    assert 1 <= len(done_before) < 5
    resumed = _run_cli(_cli_args(cached_splits, tmp_path, out, 5))
    assert resumed.wait(300) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["resumed_from_epoch"] == len(done_before) - 1
    assert s["global_step"] == reference["global_step"] and s["epochs_run"] == 5
    # Same seed and data: the resumed curve continues the uninterrupted one.
    assert [h["train_loss"] for h in s["history"]] == pytest.approx(
        [h["train_loss"] for h in reference["history"]], rel=1e-3
    )


def test_truncated_checkpoint_is_ignored(tmp_path):
    s = TrainSettings(epochs=1, batch_size=16, lr=0.05)
    _fit(tmp_path, s)
    p = tmp_path / "last_checkpoint.pt"
    p.write_bytes(p.read_bytes()[:100])
    _, r = _fit(tmp_path, s)
    assert r.resumed_from_epoch == -1 and r.epochs_run == 1


def test_copy_checkpoint_takes_its_checksum_along(tmp_path):
    from shared.io.checkpoint import CheckpointError, copy_checkpoint, save_checkpoint

    src = tmp_path / "best_model.pt"
    save_checkpoint(
        src, create_model("test_resnet", 3), model_name="test_resnet", classes=["a", "b", "c"], image_size=32
    )
    (tmp_path / "out").mkdir()
    copy_checkpoint(src, tmp_path / "out" / "model")  # a KFP output path: a file name without extension
    assert (tmp_path / "out" / "model.sha256").read_text() == (tmp_path / "best_model.pt.sha256").read_text()
    assert load_checkpoint(tmp_path / "out" / "model")["classes"] == ["a", "b", "c"]
    (tmp_path / "out" / "model").write_bytes(b"\x80 not it")
    with pytest.raises(CheckpointError, match="does not match its recorded sha256"):
        load_checkpoint(tmp_path / "out" / "model")


def test_ddp_two_gloo_processes_match_one(tmp_path):
    """2 CPU processes x batch 8 vs 1 process x batch 16: same global batch, same curve shape."""
    script = tmp_path / "ddp.py"
    script.write_text(f"""
import json, sys, torch
sys.path.insert(0, {str(ROOT)!r})
from shared.train.loop import TrainSettings, fit
from tests.unit.train.test_teacher_training import _toy
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4))
bs = int(sys.argv[1]); out = sys.argv[2]
r = fit(model, _toy(256), _toy(32, seed=1), TrainSettings(epochs=4, batch_size=bs, lr=0.02, early_stopping=False),
        out, checkpoint_meta={{"model_name": "toy", "classes": list("abcd"), "image_size": 8}}, log=lambda m: None)
import torch.distributed as dist
if not dist.is_initialized() or dist.get_rank() == 0:
    json.dump([h["train_loss"] for h in r.history], open(out + "/losses.json", "w"))
""")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, str(script), "16", str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=300
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            "8",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    l1 = json.loads((tmp_path / "one" / "losses.json").read_text())
    l2 = json.loads((tmp_path / "two" / "losses.json").read_text())
    assert len(l1) == len(l2) == 4
    assert all(np.diff(l1) < 0) and all(np.diff(l2) < 0)  # both decrease every epoch
    # Epoch 1 averages the first, largest losses and depends on the shuffle; after it the
    # two curves coincide.
    assert np.allclose(l1[1:], l2[1:], rtol=0.3) and l2[-1] == pytest.approx(l1[-1], rel=0.1)


def test_ddp_validation_shards_sum_to_the_full_set(tmp_path):
    """Under DDP each rank scores every world-th val image; the summed counts give the
    same top-1/top-5/loss as one process over the whole set (an odd size: uneven shards)."""
    script = tmp_path / "val.py"
    script.write_text(f"""
import json, sys, torch
sys.path.insert(0, {str(ROOT)!r})
from torch.utils.data import DataLoader, Subset
from shared.train.distributed import init_distributed
from shared.train.loop import evaluate_top_k
from tests.unit.train.test_teacher_training import _toy
rank, world, device = init_distributed()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4))
ds = _toy(33, seed=1)
shard = Subset(ds, range(rank, len(ds), world)) if world > 1 else ds
m = evaluate_top_k(model, DataLoader(shard, batch_size=4), device, None, False, all_reduce=world > 1)
if rank == 0:
    json.dump(m, open(sys.argv[1], "w"))
if world > 1:  # without it gloo's threads can abort the process at exit ("terminate called ...")
    torch.distributed.destroy_process_group()
""")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one.json")], env=env, capture_output=True, text=True, timeout=300
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(tmp_path / "two.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    m1, m2 = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert m1["top1_acc"] == m2["top1_acc"] and m1["top5_acc"] == m2["top5_acc"]
    assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-6)
    assert 0 < m1["top5_acc"] and m1["top1_acc"] * 33 == round(m1["top1_acc"] * 33)  # counts over all 33


def _imbalanced_labels() -> np.ndarray:
    """Classes of 900, 90 and 10 samples: an unweighted draw gives the rare class 1% of the draws."""
    return np.repeat([0, 1, 2], [900, 90, 10])


def test_distributed_weighted_sampler_shards_one_weighted_draw():
    labels = _imbalanced_labels()
    w = class_balanced_sample_weights([{"taxon": f"c{y}"} for y in labels])
    ranks = [DistributedWeightedSampler(w, num_samples=30001, num_replicas=2, rank=r, seed=7) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(3)
    shards = [list(s) for s in ranks]
    # equal shards (30001 rounded up to 2 x 15001): every rank takes as many steps
    assert len(shards[0]) == len(shards[1]) == len(ranks[0]) == 15001
    # interleaved, the shards are exactly one global draw, cut into disjoint parts
    merged = np.empty(30002, dtype=np.int64)
    merged[0::2], merged[1::2] = shards
    assert np.array_equal(merged, ranks[1].global_draw())
    # class-balanced weights: each class about a third of the draws, rare ones included
    # (chi-square, 2 degrees of freedom, p = 0.001), over the union and in each shard
    for draw in (merged, np.array(shards[0]), np.array(shards[1])):
        counts = np.bincount(labels[draw], minlength=3)
        expected = len(draw) / 3
        assert ((counts - expected) ** 2 / expected).sum() < 13.8, counts
    # set_epoch: the same epoch draws the same again (a fresh sampler, as a resumed run builds),
    # another epoch or seed draws differently
    again = DistributedWeightedSampler(w, num_samples=30001, num_replicas=2, rank=0, seed=7)
    again.set_epoch(3)
    assert list(again) == shards[0]
    again.set_epoch(4)
    assert list(again) != shards[0]
    other = DistributedWeightedSampler(w, num_samples=30001, num_replicas=2, rank=0, seed=8)
    other.set_epoch(3)
    assert list(other) != shards[0]


def test_distributed_weighted_sampler_edges():
    s = DistributedWeightedSampler([0.0, 1.0, 0.0, 3.0], num_samples=1000, num_replicas=3, rank=2)
    assert len(s) == 334 and set(s) <= {1, 3}  # a zero weight is never drawn
    assert len(DistributedWeightedSampler(np.ones(10))) == 10  # no process group: one replica
    for bad in ([], [1.0, -1.0], [0.0, 0.0], [1.0, float("nan")]):
        with pytest.raises(ValueError, match="weights"):
            DistributedWeightedSampler(bad)
    with pytest.raises(ValueError, match="rank 2"):
        DistributedWeightedSampler(np.ones(4), num_replicas=2, rank=2)


def test_ddp_two_gloo_processes_weighted_sampling(tmp_path):
    """training.weighted_sampling under torchrun: each rank trains on its share of one global
    class-balanced draw per epoch (DistributedSampler used to drop the weights)."""
    script = tmp_path / "weighted.py"
    script.write_text(f"""
import json, sys, torch
sys.path.insert(0, {str(ROOT)!r})
import numpy as np
from shared.train.loop import TrainSettings, fit
from tests.unit.train.test_teacher_training import _toy
rank = int(__import__("os").environ.get("RANK", 0))
labels = np.repeat([0, 1, 2, 3], [200, 40, 12, 4])

class Recording(torch.utils.data.Dataset):
    def __init__(self):
        base = _toy(256)
        self.x, self.seen = base.tensors[0], []
    def __len__(self):
        return len(labels)
    def __getitem__(self, i):
        self.seen.append(int(i))
        return self.x[i] + float(labels[i]), int(labels[i]), i

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4))
train = Recording()
weights = 1.0 / np.bincount(labels)[labels]
r = fit(model, train, _toy(32, seed=1), TrainSettings(epochs=3, batch_size=8, lr=0.02, early_stopping=False,
        weighted_sampling=True, seed=5), sys.argv[1], sampler_weights=weights,
        checkpoint_meta={{"model_name": "toy", "classes": list("abcd"), "image_size": 8}}, log=lambda m: None)
json.dump({{"seen": train.seen, "losses": [h["train_loss"] for h in r.history]}},
          open(sys.argv[1] + f"/rank{{rank}}.json", "w"))
""")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    runs = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(np.isfinite(run["losses"]).all() and len(run["losses"]) == 3 for run in runs)
    labels = np.repeat([0, 1, 2, 3], [200, 40, 12, 4])
    weights = 1.0 / np.bincount(labels)[labels]
    union = []
    for epoch in range(3):  # 128 draws per rank per epoch: 16 batches of 8, none dropped
        s = DistributedWeightedSampler(weights, num_samples=256, num_replicas=2, rank=0, seed=5)
        s.set_epoch(epoch)
        draw = s.global_draw()
        for rank, run in enumerate(runs):
            assert run["seen"][epoch * 128 : (epoch + 1) * 128] == draw[rank::2].tolist()
        union += draw.tolist()
    counts = np.bincount(labels[union], minlength=4)  # 768 draws, 192 expected per class
    assert ((counts - 192) ** 2 / 192).sum() < 16.3, counts  # chi-square, 3 dof, p = 0.001
    assert counts[3] > 100  # an unweighted draw would give the 4-sample class about 12
