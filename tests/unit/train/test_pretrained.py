"""Pretrained weights (shared/train/pretrained.py, the stage_weights step): model ids, every
source (the hub through a fake on 127.0.0.1, gs:// through gcp-storage-emulator, an
http(s) URL with its sha256, a local file, the pre-seeded cache), refusals (wrong
sha256, pickles with code, unreachable hub, weights of another model), and that no
training step starts from random weights when the config says `pretrained: true`."""

import json
import pickle
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from shared.config.models import offline_problems  # noqa: E402
from shared.config.pipeline import ConfigError, load_pipeline_config  # noqa: E402
from shared.config.teacher import load_teacher_config  # noqa: E402
from shared.config.weights import WeightsRequest  # noqa: E402
from shared.train.pretrained import (  # noqa: E402
    WeightsCache,
    WeightsMismatch,
    WeightsUnavailable,
    create_model,
    preprocessing_mismatches,
    stage,
)
from tests.conftest import TINY_TEACHER  # noqa: E402
from tests.fake_hub import COMMIT, FakeHub  # noqa: E402

REPO = "timm/test_resnet.r160_in1k"  # where timm's pretrained cfg for test_resnet points


def _weights(arch: str = "test_resnet", num_classes: int = 1000, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    m = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    return {k: v.contiguous() for k, v in m.state_dict().items()}


def _safetensors(tmp_path: Path, state: dict, name: str = "w.safetensors") -> Path:
    p = tmp_path / name
    save_file(state, str(p))
    return p


@pytest.fixture()
def hub(tmp_path):
    state = _weights()
    with FakeHub() as h:
        h.files[(REPO, "model.safetensors")] = _safetensors(tmp_path, state).read_bytes()
        h.state = state
        yield h


def test_timm_name_from_the_hub_is_cached_and_loads_bit_for_bit(hub, tmp_path):
    cache = WeightsCache(str(tmp_path / "wc"))
    rec = stage(WeightsRequest("global teacher", "test_resnet"), cache, endpoint=hub.endpoint)
    assert rec["pretrained"] and rec["architecture"] == "test_resnet" and rec["commit"] == COMMIT
    assert rec["source"] == f"hf-hub:{REPO}/model.safetensors" and rec["head_rows"] == 1000
    assert rec["pretrained_cfg"]["mean"] == [0.5, 0.5, 0.5]  # the weights' own preprocessing
    assert (tmp_path / "wc" / rec["file"]).is_file() and rec["file"] == f"blobs/{rec['sha256']}.safetensors"
    # a second staging (another pod, another run) reads the cache: no second download
    again = stage(WeightsRequest("student", "test_resnet"), cache, endpoint=hub.endpoint)
    assert again["sha256"] == rec["sha256"] and hub.downloads("model.safetensors") == 1
    model = create_model("test_resnet", 5, 0.0, 32, weights=rec, log=lambda *_: None)
    own = model.state_dict()
    body = [k for k in hub.state if not k.startswith("fc.")]
    assert body and all(torch.equal(own[k], hub.state[k]) for k in body)
    assert own["fc.weight"].shape == (5, hub.state["fc.weight"].shape[1])  # a new head for our classes


def test_model_id_with_tag_and_revision(hub, tmp_path):
    rec = stage(
        WeightsRequest("global teacher", "test_resnet.r160_in1k", revision="v1"),
        WeightsCache(str(tmp_path / "wc")),
        endpoint=hub.endpoint,
    )
    assert rec["revision"] == "v1" and any("/resolve/v1/model.safetensors" in p for _, p in hub.requests)
    with pytest.raises(ValueError, match="no pretrained tag 'nope'"):
        stage(WeightsRequest("x", "test_resnet.nope"), WeightsCache(str(tmp_path / "wc")), endpoint=hub.endpoint)
    with pytest.raises(ValueError, match="no architecture"):
        stage(WeightsRequest("x", "resnet_that_does_not_exist"), WeightsCache(str(tmp_path / "wc")))


def test_hf_hub_id_with_class_names_maps_head_rows_by_species(tmp_path):
    """A plant checkpoint on the hub (timm's config.json with label_names): rows of species
    we share are copied by name, the others are new."""
    species = ["Quercus ilex", "Pinus pinea", "Olea europaea", "Cistus albidus"]
    state = _weights(num_classes=len(species), seed=3)
    config = {
        "architecture": "test_resnet",
        "num_classes": len(species),
        "label_names": species,
        "pretrained_cfg": {
            "input_size": [3, 160, 160],
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "classifier": "fc",
            "interpolation": "bicubic",
        },
    }
    with FakeHub() as h:
        h.files[("plantclef/plant-resnet", "config.json")] = json.dumps(config).encode()
        h.files[("plantclef/plant-resnet", "model.safetensors")] = _safetensors(tmp_path, state).read_bytes()
        rec = stage(
            WeightsRequest("global teacher", "hf-hub:plantclef/plant-resnet"),
            WeightsCache(str(tmp_path / "wc")),
            endpoint=h.endpoint,
        )
    assert rec["architecture"] == "test_resnet" and rec["class_names"] == species and rec["head_rows"] == 4
    ours = ["Olea europaea", "Lavandula stoechas", "Quercus ilex"]
    model = create_model("hf-hub:plantclef/plant-resnet", len(ours), weights=rec, classes=ours, log=lambda *_: None)
    w = model.state_dict()["fc.weight"]
    assert torch.equal(w[0], state["fc.weight"][2]) and torch.equal(w[2], state["fc.weight"][0])
    assert not any(torch.equal(w[1], state["fc.weight"][i]) for i in range(4))  # a species new to the weights
    # its own preprocessing matches the config's: no warning
    assert preprocessing_mismatches(rec, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 160) == []


def test_preprocessing_mismatch_names_both_values(hub, tmp_path):
    rec = stage(WeightsRequest("t", "test_resnet"), WeightsCache(str(tmp_path / "wc")), endpoint=hub.endpoint)
    warn = preprocessing_mismatches(rec, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 32)
    assert any("normalize.mean is [0.485, 0.456, 0.406]" in w and "[0.5, 0.5, 0.5]" in w for w in warn)
    assert any("image size is 32" in w and "160 px" in w for w in warn)


def test_gs_weights_file_through_the_emulator(tmp_path):
    from shared.io import gcs
    from tests.gcs_emulator import gcs_emulator

    data = _safetensors(tmp_path, _weights(seed=1)).read_bytes()
    with gcs_emulator("models"):
        gcs.client().bucket("models").blob("resnet/w.safetensors").upload_from_string(data)
        rec = stage(
            WeightsRequest("global teacher", "test_resnet", pretrained_path="gs://models/resnet/w.safetensors"),
            WeightsCache("gs://models/weights-cache"),
            offline=True,
        )
        assert rec["source"] == "gs://models/resnet/w.safetensors"
        names = {b.name for b in gcs.client().list_blobs("models", prefix="weights-cache/")}
        assert f"weights-cache/{rec['file']}" in names  # uploaded to the bucket cache for the training pods
        assert any(n.startswith("weights-cache/refs/") for n in names)


def test_url_needs_its_sha256_and_a_wrong_one_is_refused(tmp_path):
    from shared.io.atomic import sha256_file
    from tests.image_server import ImageServer

    path = _safetensors(tmp_path, _weights(seed=2))
    with ImageServer() as server:
        url = server.add("w.safetensors", path.read_bytes())
        with pytest.raises(ValueError, match="set global teacher: model.sha256"):
            stage(WeightsRequest("global teacher", "test_resnet", pretrained_path=url), WeightsCache(str(tmp_path)))
        with pytest.raises(WeightsMismatch, match="sha256 differs"):
            stage(
                WeightsRequest("global teacher", "test_resnet", pretrained_path=url, sha256="0" * 64),
                WeightsCache(str(tmp_path / "wc")),
            )
        assert not (tmp_path / "wc" / "blobs").exists()  # nothing refused is cached
        good = stage(
            WeightsRequest("global teacher", "test_resnet", pretrained_path=url, sha256=sha256_file(path)),
            WeightsCache(str(tmp_path / "wc")),
            offline=True,
        )
        assert good["sha256"] == sha256_file(path)
    with pytest.raises(ConfigError, match="baseline.sha256"):
        load_pipeline_config(ROOT / "config" / "local.yaml", {"baseline.weights": "https://example.org/w.pth"})


def test_unreachable_hub_names_the_model_and_every_source(tmp_path):
    with pytest.raises(WeightsUnavailable) as e:
        stage(
            WeightsRequest("student", "test_efficientnet", pretrained_path=str(tmp_path / "missing.pth")),
            WeightsCache(str(tmp_path / "wc")),
            endpoint="http://127.0.0.1:9",
        )
    msg = str(e.value)
    assert "student: pretrained weights for test_efficientnet cannot be had" in msg
    assert "missing.pth" in msg and "hub http://127.0.0.1:9/timm/test_efficientnet.r160_in1k" in msg
    assert "unreachable" in msg and "model.pretrained: false" in msg
    assert not (tmp_path / "wc" / "blobs").exists()


def test_offline_uses_only_the_preseeded_cache(hub, tmp_path):
    """The air-gapped procedure: stage where the hub is reachable, copy the cache, pin the sha256."""
    import shutil

    seeded = stage(WeightsRequest("t", "test_resnet"), WeightsCache(str(tmp_path / "online")), endpoint=hub.endpoint)
    shutil.copytree(tmp_path / "online", tmp_path / "cluster")
    n = len(hub.requests)
    pinned = stage(
        WeightsRequest("t", "test_resnet", sha256=seeded["sha256"]),
        WeightsCache(str(tmp_path / "cluster")),
        endpoint=hub.endpoint,
        offline=True,
    )
    by_ref = stage(WeightsRequest("t", "test_resnet"), WeightsCache(str(tmp_path / "cluster")), offline=True)
    assert pinned["sha256"] == by_ref["sha256"] == seeded["sha256"] and len(hub.requests) == n
    with pytest.raises(WeightsUnavailable, match="not tried: weights.offline is true"):
        stage(
            WeightsRequest("t", "test_resnet"),
            WeightsCache(str(tmp_path / "empty")),
            endpoint=hub.endpoint,
            offline=True,
        )
    # a cached file changed in place is refused, not used
    blob = tmp_path / "cluster" / seeded["file"]
    blob.write_bytes(blob.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(WeightsMismatch, match="was changed"):
        stage(WeightsRequest("t", "test_resnet"), WeightsCache(str(tmp_path / "cluster")), offline=True)


class _Payload:
    ran = []

    def __reduce__(self):
        return (_Payload.ran.append, ("pwned",))


def test_a_pickle_with_code_is_refused_and_never_runs(tmp_path):
    p = tmp_path / "evil.pth"
    with open(p, "wb") as f:
        pickle.dump({"fc.weight": _Payload()}, f)
    with pytest.raises(WeightsMismatch, match="not loadable as weights data"):
        stage(
            WeightsRequest("t", "test_resnet", pretrained_path=str(p)), WeightsCache(str(tmp_path / "wc")), offline=True
        )
    assert _Payload.ran == []


def test_weights_of_another_model_are_refused(tmp_path):
    p = _safetensors(tmp_path, _weights("test_efficientnet"))
    with pytest.raises(WeightsMismatch, match="does not fit timm's test_resnet"):
        stage(
            WeightsRequest("t", "test_resnet", pretrained_path=str(p)), WeightsCache(str(tmp_path / "wc")), offline=True
        )


def test_wrapped_checkpoint_with_module_prefix_loads(tmp_path):
    """{"state_dict": {"module.x": ...}} as DDP training scripts save it: unwrapped by timm's loader."""
    state = _weights(seed=4)
    p = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, p)
    rec = stage(
        WeightsRequest("t", "test_resnet", pretrained_path=str(p)), WeightsCache(str(tmp_path / "wc")), offline=True
    )
    model = create_model("test_resnet", 3, weights=rec, log=lambda *_: None)
    assert torch.equal(model.state_dict()["conv1.0.weight"], state["conv1.0.weight"])


def test_pretrained_true_never_trains_from_scratch(cached_splits, hub, tmp_path):
    from shared.train.teacher import train_teacher

    cfg = load_teacher_config(TINY_TEACHER, {"model.pretrained": True, "training.epochs": 1})
    args = (cached_splits["train"], cached_splits["val"], cached_splits["cache_dir"])
    with pytest.raises(WeightsUnavailable, match="model.pretrained is true but no staged weights"):
        train_teacher(cfg, *args, str(tmp_path / "none"), log=lambda *_: None)
    assert not (tmp_path / "none" / "best_model.pt").exists()
    rec = stage(
        WeightsRequest("global teacher", "test_resnet"), WeightsCache(str(tmp_path / "wc")), endpoint=hub.endpoint
    )
    lines = []
    s = train_teacher(cfg, *args, str(tmp_path / "t"), weights=rec, log=lines.append)
    assert not s["trained_from_scratch"] and s["pretrained"]["sha256"] == rec["sha256"]
    assert any("normalize.mean" in w for w in s["preprocessing_warnings"])
    assert any(line.startswith("WARNING: normalize.mean") for line in lines)
    # a regional teacher starts from the global teacher: no weights, no download at all
    n = len(hub.requests)
    region = [r for r in cached_splits["train"] if r["region"] == "EU_SW"]
    rs = train_teacher(
        cfg,
        region,
        cached_splits["val"],
        cached_splits["cache_dir"],
        str(tmp_path / "r"),
        init_from=str(tmp_path / "t" / "best_model.pt"),
        log=lambda *_: None,
    )
    assert rs["init"]["head_rows_mapped"] > 0 and len(hub.requests) == n
    # weights staged for another model id are refused
    with pytest.raises(WeightsUnavailable, match="teacher: staged weights are for test_resnet"):
        train_teacher(
            load_teacher_config(cfg, {"model.name": "test_resnet.r160_in1k"}),
            *args,
            str(tmp_path / "other"),
            weights=rec,
            log=lambda *_: None,
        )


def test_student_and_baseline_refuse_missing_weights(cached_splits, tmp_path):
    from shared.train.baseline import build_backbone
    from shared.train.student import train_student

    with pytest.raises(WeightsUnavailable, match="student test_efficientnet: model.pretrained is true"):
        train_student(
            {
                "model": {"name": "test_efficientnet", "image_size": 32},
                "augmentation": {"train": {"resize": 36, "crop": 32}, "val": {"resize": 36, "center_crop": 32}},
            },
            cached_splits["train"],
            cached_splits["val"],
            cached_splits["cache_dir"],
            str(tmp_path),
            None,
            log=lambda *_: None,
        )
    with pytest.raises(WeightsUnavailable, match="baseline test_efficientnet"):
        build_backbone("test_efficientnet", True, None)
    _, described = build_backbone("test_efficientnet", False, None)
    assert "says nothing about a pretrained model" in described


def test_baseline_with_staged_weights_reports_them(cached_splits, tmp_path):
    from shared.io.records import write_jsonl
    from shared.train.baseline import run_baseline

    p = _safetensors(tmp_path, _weights("test_efficientnet"))
    rec = stage(
        WeightsRequest("baseline", "test_efficientnet", pretrained_path=str(p)),
        WeightsCache(str(tmp_path / "wc")),
        offline=True,
    )
    write_jsonl(tmp_path / "train.jsonl", cached_splits["train"])
    write_jsonl(tmp_path / "test.jsonl", cached_splits["test"])
    r = run_baseline(
        str(tmp_path / "train.jsonl"),
        str(tmp_path / "test.jsonl"),
        cached_splits["cache_dir"],
        "test_efficientnet",
        True,
        rec,
        32,
    )
    assert r["weights"].startswith("pretrained test_efficientnet") and r["weights_staged"]["sha256"] == rec["sha256"]
    assert r["versus_plan"].endswith("the plan's expected 30%-40%") and r["device"] == "cpu"


def test_offline_cluster_config_without_a_source_is_refused():
    from shared.config.cluster import cluster_problems

    cfg = load_pipeline_config(ROOT / "config" / "cluster.yaml")
    assert cluster_problems(cfg) == []
    offline = load_pipeline_config(ROOT / "config" / "cluster.yaml", {"weights.offline": True})
    problems = cluster_problems(offline)
    assert len(problems) == 3 and all("weights.offline is true" in p for p in problems)
    assert any(p.startswith("global teacher vit_base_patch16_384") for p in problems)
    mirror = load_pipeline_config(
        ROOT / "config" / "cluster.yaml", {"weights.offline": True, "weights.hub_endpoint": "https://hub.internal"}
    )
    assert offline_problems(mirror) == []
    off_volume = load_pipeline_config(ROOT / "config" / "cluster.yaml", {"weights.cache_dir": "/tmp/w"})
    assert any("weights.cache_dir" in p for p in cluster_problems(off_volume))


def test_cluster_pipeline_stages_weights_before_every_training_step(tmp_path):
    import yaml
    from kfp import compiler

    import pipeline

    cfg = load_pipeline_config(ROOT / "config" / "cluster.yaml")
    path = tmp_path / "p.yaml"
    compiler.Compiler().compile(pipeline.build_pipeline(cfg), str(path))
    docs = list(yaml.safe_load_all(path.read_text()))
    tasks = docs[0]["root"]["dag"]["tasks"]
    staged = {name for name in tasks if name.startswith("stage-weights")}
    assert len(staged) == 3
    for consumer in ("baseline", "train-teacher", "train-student"):
        arts = tasks[consumer]["inputs"]["artifacts"]
        assert arts["weights"]["taskOutputArtifact"]["producerTask"] in staged, consumer
    roles = {tasks[t]["inputs"]["parameters"]["role"]["runtimeValue"]["constant"] for t in staged}
    assert roles == {"global teacher", "student", "baseline"}
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    k8s = platform["exec-stage-weights"]
    assert k8s["secretAsEnv"][0]["keyToEnv"] == [{"secretKey": "token", "envVar": "HF_TOKEN"}]
    assert "nodeSelector" in k8s and k8s["pvcMount"][0]["mountPath"] == "/mnt/plantid"
    execs = docs[0]["deploymentSpec"]["executors"]
    assert "nvidia.com/gpu" not in json.dumps(execs["exec-stage-weights"])  # a CPU pod


def test_vit_weights_at_another_image_size(tmp_path):
    """A ViT's weights at its own 160 px, trained at our 32 px: timm resamples the position
    embeddings, and the size difference is a warning."""
    p = _safetensors(tmp_path, _weights("test_vit"))
    rec = stage(
        WeightsRequest("t", "test_vit", pretrained_path=str(p)), WeightsCache(str(tmp_path / "wc")), offline=True
    )
    model = create_model("test_vit", 7, 0.1, 32, weights=rec, log=lambda *_: None)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert any("trained at 160 px" in w for w in preprocessing_mismatches(rec, [0.5] * 3, [0.5] * 3, 32))


def test_the_plans_models_resolve_to_their_hub_repositories(tmp_path):
    """config/cluster.yaml's teacher, student and baseline ask the hub for timm's default tags
    (an empty fake hub answers 'not found', so nothing is downloaded)."""
    from shared.config.models import model_request, run_requests

    cfg = load_pipeline_config(ROOT / "config" / "cluster.yaml")
    with FakeHub() as h:
        for role, kind, config in run_requests(cfg):
            with pytest.raises(WeightsUnavailable, match=role):
                stage(model_request(role, kind, config), WeightsCache(str(tmp_path / "wc")), endpoint=h.endpoint)
    asked = {p.split("/resolve/")[0] for _, p in h.requests}
    assert asked == {"/timm/vit_base_patch16_384.augreg_in21k_ft_in1k", "/timm/mobilenetv2_100.ra_in1k"}
