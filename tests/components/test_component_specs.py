"""What the compiled pipeline carries for the KFP UI and the cluster: a description for every
component input and output (from the components' Google-style Args:/Returns: docstrings), and
each task's image from the config the pipeline is built for (registry and tag, or a digest)."""

import importlib
import sys
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import pipeline  # noqa: E402
from components import images  # noqa: E402
from shared.config.pipeline import IMAGE_NAMES, ConfigError, load_pipeline_config  # noqa: E402

CLUSTER = ROOT / "config" / "cluster.yaml"
DIGEST = "sha256:" + "0123456789abcdef" * 4


def compiled(cfg: dict, path: Path) -> dict:
    """The pipeline spec document of a compiled package."""
    pipeline.compile_pipeline(cfg, str(path))
    return next(d for d in yaml.safe_load_all(path.read_text()) if d and "deploymentSpec" in d)


def executor_images(spec: dict) -> dict[str, str]:
    return {label: ex["container"]["image"] for label, ex in spec["deploymentSpec"]["executors"].items()}


@pytest.fixture(scope="module")
def cluster_spec(tmp_path_factory) -> dict:
    return compiled(load_pipeline_config(CLUSTER), tmp_path_factory.mktemp("spec") / "p.yaml")


def undocumented(definitions: dict) -> list[str]:
    """Names of the parameters/artifacts of an inputDefinitions/outputDefinitions without a description."""
    return [
        f"{kind[:-1]} {name}"
        for kind in ("parameters", "artifacts")
        for name, d in (definitions or {}).get(kind, {}).items()
        if not str(d.get("description", "")).strip()
    ]


def test_every_component_input_and_output_has_a_description_in_the_compiled_spec(cluster_spec):
    missing = {}
    checked = 0
    for name, comp in cluster_spec["components"].items():
        if "executorLabel" not in comp:
            continue  # a DAG the compiler made (ParallelFor, If/Else): its inputs are pipeline channels
        checked += 1
        gaps = undocumented(comp.get("inputDefinitions")) + [
            f"output {g}" for g in undocumented(comp.get("outputDefinitions"))
        ]
        if gaps:
            missing[name] = gaps
    assert checked >= 15, f"only {checked} components compiled; is the pipeline complete?"
    assert not missing, (
        "inputs/outputs without a description (document each under the component's Args: / Returns:, "
        f"one `name: description.` entry per line): {missing}"
    )


def component_objects():
    """Every KFP component defined in components/*.py (wired into the pipeline or not)."""
    for path in sorted((ROOT / "components").glob("*.py")):
        mod = importlib.import_module(f"components.{path.stem}")
        for attr, obj in vars(mod).items():
            func = getattr(obj, "python_func", None)
            if (
                getattr(obj, "component_spec", None) is not None
                and func is not None
                and func.__module__ == mod.__name__
            ):
                yield f"components/{path.name}:{attr}", obj.component_spec


def test_every_component_documents_each_input_and_output():
    found = dict(component_objects())
    assert {"components/ingest.py:ingest", "components/export_tfjs.py:export_skipped"} <= set(found)
    missing = {
        where: [
            n for n, s in {**(spec.inputs or {}), **(spec.outputs or {})}.items() if not (s.description or "").strip()
        ]
        for where, spec in found.items()
    }
    assert not {k: v for k, v in missing.items() if v}, missing


# --- images from the config, at build time ---------------------------------------------------


def test_two_configs_in_one_process_each_get_their_own_images(tmp_path, monkeypatch):
    # The former mechanism read these at import; they must no longer matter.
    monkeypatch.setenv("PLANTID_IMAGE_REGISTRY", "env.example/ignored")
    monkeypatch.setenv("PLANTID_IMAGE_TAG", "ignored")
    a = load_pipeline_config(
        CLUSTER, {"pipeline.images.registry": "registry-a.example/ml", "pipeline.images.tag": "1.0.0"}
    )
    b = load_pipeline_config(
        CLUSTER, {"pipeline.images.registry": "registry-b.example:5000/team", "pipeline.images.tag": "2.0.0-rc1"}
    )
    spec_a = compiled(a, tmp_path / "a.yaml")
    spec_b = compiled(b, tmp_path / "b.yaml")
    spec_a_again = compiled(a, tmp_path / "a2.yaml")
    for spec, reg, tag in (
        (spec_a, "registry-a.example/ml", "1.0.0"),
        (spec_b, "registry-b.example:5000/team", "2.0.0-rc1"),
        (spec_a_again, "registry-a.example/ml", "1.0.0"),
    ):
        refs = executor_images(spec)
        assert set(refs.values()) == {f"{reg}/plantid-{n}:{tag}" for n in images.IMAGES}, refs
    # Each task keeps the image its component declares (the TF.js export in the export image, ...).
    declared = {
        "exec-ingest": "data",
        "exec-train-teacher": "train",
        "exec-export-tfjs": "export",
        "exec-export-skipped": "data",
        "exec-stage-weights": "train",
    }
    for label, name in declared.items():
        assert executor_images(spec_b)[label] == f"registry-b.example:5000/team/plantid-{name}:2.0.0-rc1"


def test_the_pipeline_object_kfp_local_runs_carries_the_config_images():
    """kfp.local (DockerRunner) runs the executors of the built pipeline's own spec."""
    cfg = load_pipeline_config(
        CLUSTER, {"pipeline.images.registry": "localhost:5000/plantid", "pipeline.images.tag": "dev"}
    )
    spec = json_format.MessageToDict(pipeline.build_pipeline(cfg).pipeline_spec)
    refs = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
    assert refs == {f"localhost:5000/plantid/plantid-{n}:dev" for n in images.IMAGES}


def test_a_digest_replaces_the_tag_of_that_image_only(tmp_path):
    cfg = load_pipeline_config(CLUSTER, {"pipeline.images.digests": {"train": DIGEST}})
    refs = executor_images(compiled(cfg, tmp_path / "p.yaml"))
    registry, tag = cfg["pipeline"]["images"]["registry"], cfg["pipeline"]["images"]["tag"]
    assert refs["exec-train-teacher"] == f"{registry}/plantid-train@{DIGEST}"
    assert refs["exec-ingest"] == f"{registry}/plantid-data:{tag}"
    assert refs["exec-export-tfjs"] == f"{registry}/plantid-export:{tag}"


@pytest.mark.parametrize(
    "digests, message",
    [
        ({"train": "sha256:abc"}, "pipeline.images.digests.train: expected 'sha256:' and 64 lowercase hex"),
        ({"train": DIGEST.upper()}, "pipeline.images.digests.train:"),
        ({"train": DIGEST[len("sha256:") :]}, "pipeline.images.digests.train:"),
        ({"train": 123}, "pipeline.images.digests.train:"),
        ({"trian": DIGEST}, "pipeline.images.digests.trian: unknown image (did you mean train?)"),
        (["train"], "pipeline.images.digests: expected a mapping"),
    ],
)
def test_bad_digests_are_a_config_error_naming_the_key(digests, message):
    with pytest.raises(ConfigError) as e:
        load_pipeline_config(CLUSTER, {"pipeline.images.digests": digests})
    assert message in str(e.value)


def test_digests_from_a_config_file(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"pipeline:\n  images:\n    registry: r.example/ml\n    tag: '1.2.3'\n"
        f"    digests:\n      data: {DIGEST}\n      export: {DIGEST}\n"
    )
    cfg = load_pipeline_config(path)
    assert cfg["pipeline"]["images"]["digests"] == {"data": DIGEST, "export": DIGEST}
    assert images.image_refs(cfg["pipeline"]["images"]) == {
        "data": f"r.example/ml/plantid-data@{DIGEST}",
        "train": "r.example/ml/plantid-train:1.2.3",
        "export": f"r.example/ml/plantid-export@{DIGEST}",
    }


def test_image_references():
    assert images.image("train") == f"{images.DEFAULT_REGISTRY}/plantid-train:{images.DEFAULT_TAG}"
    assert images.image("data", "r.example/x", "7", DIGEST) == f"r.example/x/plantid-data@{DIGEST}"
    with pytest.raises(ValueError, match="digest"):
        images.image("data", digest="sha256:short")
    with pytest.raises(KeyError):
        images.image("gpu")
    # shared/ cannot import components/ (the library stays below the KFP shells): the names agree here
    assert set(IMAGE_NAMES) == set(images.IMAGES)


def test_a_component_with_a_foreign_base_image_fails_the_build():
    from kfp import dsl

    @dsl.component(base_image="python:3.11", install_kfp_package=False)
    def foreign(x: int) -> int:
        """A component outside the project's images.

        Args:
            x: A number.

        Returns:
            Output: The same number.
        """
        return x

    with pytest.raises(KeyError, match="base_image=DATA_IMAGE, TRAIN_IMAGE or EXPORT_IMAGE"):

        @dsl.pipeline(name="foreign")
        def p():
            foreign(x=1)
            images.apply_images_to_pipeline({"registry": "r", "tag": "t"})


def test_every_pipeline_parameter_is_described_and_the_root_is_the_configs(cluster_spec):
    from shared.config.pipeline_parameters import PARAMETER_DOCS

    params = cluster_spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == set(PARAMETER_DOCS)  # a new parameter needs its description
    assert not [n for n, p in params.items() if not p.get("description")]
    assert params["quantization"]["description"] == PARAMETER_DOCS["quantization"]
    assert cluster_spec["defaultPipelineRoot"] == load_pipeline_config(CLUSTER)["pipeline"]["root"]


def test_a_config_without_a_root_compiles_without_one(tmp_path):
    cfg = load_pipeline_config(ROOT / "config" / "local.yaml")
    assert cfg["pipeline"]["root"] == "" and "defaultPipelineRoot" not in compiled(cfg, tmp_path / "p.yaml")
    with pytest.raises(ConfigError, match=r"pipeline.root: 'plantid-bucket/runs' is not an object-store URI"):
        load_pipeline_config(CLUSTER, {"pipeline.root": "plantid-bucket/runs"})


def test_run_parameters_takes_every_pipeline_parameter_the_manifest_does_not(cluster_spec):
    from shared.config.pipeline_parameters import RECORDED_BY_MANIFEST, RUN_PARAMETER_NAMES

    params = cluster_spec["root"]["inputDefinitions"]["parameters"]
    task = cluster_spec["root"]["dag"]["tasks"]["run-parameters"]["inputs"]["parameters"]
    wired = {n: v.get("componentInputParameter") for n, v in task.items() if n != "compiled_defaults"}
    assert set(RUN_PARAMETER_NAMES) == set(params) - set(RECORDED_BY_MANIFEST)
    assert wired == {n: n for n in RUN_PARAMETER_NAMES}  # each from the run's own parameter
    defaults = task["compiled_defaults"]["runtimeValue"]["constant"]
    assert defaults["quantization"] == params["quantization"]["defaultValue"]
    manifest_inputs = cluster_spec["root"]["dag"]["tasks"]["training-manifest"]["inputs"]["parameters"]
    assert manifest_inputs["run_parameters"]["taskOutputParameter"]["producerTask"] == "run-parameters"


def test_run_parameters_names_what_differs_from_the_compiled_defaults():
    from components.run_parameters import run_parameters
    from shared.config.pipeline_parameters import RUN_PARAMETER_NAMES

    defaults = {n: 1 for n in RUN_PARAMETER_NAMES} | {"quantization": "auto", "train_ce_control": True}
    given = {**defaults, "quantization": "uint8", "gate_min_val_top1": 0.72, "cache_workers": 1.0}
    out = run_parameters.python_func(**given, compiled_defaults=defaults)
    assert out["overridden"] == ["gate_min_val_top1", "quantization"]  # 1.0 == 1: KFP's numbers
    assert out["values"]["quantization"] == "uint8" and set(out["values"]) == set(RUN_PARAMETER_NAMES)
