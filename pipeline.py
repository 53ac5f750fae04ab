#!/usr/bin/env python
"""The plant-ID training pipeline: the KFP DAG and its command line.

    python pipeline.py run-local --config config/local.yaml [--records PATH] [--output DIR]
    python pipeline.py compile   --config config/cluster.yaml --output pipeline.yaml
    python pipeline.py stage-weights --config config/cluster.yaml [--cache DIR]
    python pipeline.py submit   --config config/cluster.yaml [--host URL] [--param K=V ...] [--dry-run] [--wait]
    python pipeline.py schedule --config config/cluster.yaml [--host URL] --cron "0 3 * * 0" [--dry-run]
    python pipeline.py release  --config config/cluster.yaml (--list | --rollback [VERSION] [--reason TEXT])

Everything a phase does lives in shared/; components/ wrap it; this file only
wires the DAG, with the config's values as pipeline-parameter defaults."""

import argparse
import inspect
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # kfp is imported where it is used: the CLI starts fast
    from kfp.local import DockerRunner, SubprocessRunner

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from shared.config.pipeline import ingest_checks, load_pipeline_config  # noqa: E402


def _import_components() -> dict:
    """The components by step name. Their images are set per config when the pipeline is built
    (components.images.apply_images_to_pipeline), so importing them reads no config."""
    from components import (
        baseline,
        cache_images,
        calibrate,
        combine_soft_labels,
        evaluate_teacher,
        export_tfjs,
        ingest,
        publish,
        run_parameters,
        split,
        stage_weights,
        teacher_logits,
        train_student,
        train_teacher,
        training_manifest,
        validate_export,
    )

    return {
        "ingest": ingest.ingest,
        "run_parameters": run_parameters.run_parameters,
        "cache_images": cache_images.cache_images,
        "split": split.split,
        "regional_split": split.regional_split,
        "baseline": baseline.baseline,
        "stage_weights": stage_weights.stage_weights,
        "train_teacher": train_teacher.train_teacher,
        "evaluate_teacher": evaluate_teacher.evaluate_teacher,
        "teacher_logits": teacher_logits.teacher_logits,
        "combine_soft_labels": combine_soft_labels.combine_soft_labels,
        "train_student": train_student.train_student,
        "calibrate": calibrate.calibrate,
        "export_tfjs": export_tfjs.export_tfjs,
        "export_skipped": export_tfjs.export_skipped,
        "validate_export": validate_export.validate_export,
        "publish": publish.publish,
        "training_manifest": training_manifest.training_manifest,
    }


def teacher_parameters(cfg: dict) -> tuple[dict, list[dict]]:
    """The global teacher config and the regional teacher items, as pipeline-parameter defaults."""
    from shared.train.teacher_set import teacher_set

    return teacher_set(cfg)


def build_pipeline(cfg: dict, local: bool = False):
    """Return the @dsl.pipeline function for `cfg` (its values are the parameter defaults).

    The manifest step runs after any upstream failure (ignore_upstream_failure) in the compiled
    pipeline; `local` (kfp.local) leaves that out: kfp 2.17.3's local runner raises resolving a
    failed task's outputs for it, so run_local writes the manifest itself after a failure."""
    from kfp import dsl

    c = _import_components()
    from components.images import apply_images_to_pipeline
    from components.platform import apply_platform_to_pipeline

    d, ca, b, t = cfg["data"], cfg["cache"], cfg["baseline"], cfg["teachers"]
    global_teacher_cfg, regional_teachers_default = teacher_parameters(cfg)
    from shared.config.pipeline_parameters import RUN_PARAMETER_NAMES, described_docstring
    from shared.config.student import load_student_config

    # the student reads the cache's student rendition (cache.student_resize; 0: the main files)
    student_cfg = load_student_config(
        cfg["student"]["config"], {**cfg["student"]["overrides"], "data.student_rendition": ca["student_resize"]}
    )
    cl = cfg["cluster"] if isinstance(cfg["cluster"], dict) else {}
    gpus_default, student_gpus_default = int(cl.get("gpus_per_teacher", 1)), int(cl.get("gpus_per_student", 1))
    settings_default = {k: cfg[k] for k in ("data", "cache", "split", "calibration", "export", "weights", "release")}
    parallel_regional = int(cl.get("max_parallel_regional_teachers", 0))

    def plantid_pipeline(
        source: str = d["source"],
        records_uri: str = d["records_uri"],
        snapshot_id: str = d["snapshot_id"],
        mongo: dict = d["mongo"],
        license_allow: list = d["license_allow"],
        min_side: int = d["min_side"],
        cache_dir: str = ca["dir"],
        resize: int = ca["resize"],
        student_resize: int = ca["student_resize"],
        max_fail_rate: float = ca["max_fail_rate"],
        fetch_policy: dict = ca["fetch"],
        cache_workers: int = ca["workers"],
        split_seed: int = cfg["split"]["seed"],
        baseline_settings: dict = b,
        weights_cache: str = cfg["weights"]["cache_dir"],
        hub_endpoint: str = cfg["weights"]["hub_endpoint"],
        weights_offline: bool = cfg["weights"]["offline"],
        global_teacher_config: dict = global_teacher_cfg,
        regional_teachers: list = regional_teachers_default,
        global_teacher_weight: float = t["global_weight"],
        teacher_overrides: dict = {},  # noqa: B006 (a KFP parameter default: a constant in the spec)
        logits_top_k: int = t["logits_top_k"],
        checkpoint_dir: str = t["checkpoint_dir"],
        gpus_per_teacher: int = gpus_default,
        student_config: dict = student_cfg,
        gpus_per_student: int = student_gpus_default,
        train_ce_control: bool = cfg["student"]["train_ce_control"],
        ece_threshold: float = cfg["calibration"]["ece_threshold"],
        target_precision: float = cfg["calibration"]["target_precision"],
        calibration_objective: str = cfg["calibration"]["objective"],
        gate_min_val_top1: float = cfg["export"]["gates"]["min_val_top1"],
        gate_max_ece: float = cfg["export"]["gates"]["max_ece"],
        gate_min_coverage: float = cfg["export"]["gates"]["min_coverage"],
        gate_min_precision: float = cfg["export"]["gates"]["min_precision"],
        quantization: str = cfg["export"]["quantization"],
        export_images: int = cfg["export"]["validation_images"],
        min_parity_correlation: float = cfg["export"]["min_correlation"],
        min_parity_agreement: float = cfg["export"]["min_top1_agreement"],
        weight_shard_mb: float = cfg["export"]["weight_shard_mb"],
        gate_max_bundle_mb: float = cfg["export"]["gates"]["max_bundle_mb"],
        gate_max_latency_ms: float = cfg["export"]["gates"]["max_latency_ms"],
        latency_runtime: str = cfg["export"]["latency_runtime"],
        seed: int = cfg["pipeline"]["seed"],
        pipeline_settings: dict = settings_default,
    ):
        given = dict(locals())  # the run's parameters (channels), before any other local
        rp = c["run_parameters"](
            **{n: given[n] for n in RUN_PARAMETER_NAMES},
            compiled_defaults={n: defaults[n] for n in RUN_PARAMETER_NAMES},
        )
        rp.set_display_name("run parameters")
        ing = c["ingest"](
            source=source,
            records_uri=records_uri,
            mongo=mongo,
            license_allow=license_allow,
            min_side=min_side,
            snapshot_id=snapshot_id,
            checks=ingest_checks(cfg),
        )
        ing.set_display_name("ingest (phase 0)")
        cached = c["cache_images"](
            records=ing.outputs["records"],
            cache_dir=cache_dir,
            resize=resize,
            min_side=min_side,
            max_fail_rate=max_fail_rate,
            workers=cache_workers,
            fetch_policy=fetch_policy,
            student_resize=student_resize,
        )
        cached.set_display_name("cache images (phase 0)")
        sp = c["split"](cached=cached.outputs["cached"], regions="", seed=split_seed)
        sp.set_display_name("stratified split (1.0)")

        # Pretrained weights of every model, staged once (before any GPU pod) into the weights cache.
        def stage(role: str, kind: str, config, overrides):
            task = c["stage_weights"](
                role=role,
                kind=kind,
                config=config,
                overrides=overrides,
                weights_cache=weights_cache,
                hub_endpoint=hub_endpoint,
                offline=weights_offline,
            )
            task.set_display_name(f"stage weights: {role}")
            return task.outputs["weights"]

        teacher_weights = stage("global teacher", "teacher", global_teacher_config, teacher_overrides)
        student_weights = stage("student", "student", student_config, {})
        baseline_weights = stage("baseline", "baseline", baseline_settings, {})
        base = c["baseline"](
            train=sp.outputs["train"],
            test=sp.outputs["test"],
            cache_dir=cache_dir,
            settings=baseline_settings,
            weights=baseline_weights,
        )
        base.set_display_name("baseline (phase 0)")

        # Phase 1: the global teacher.
        gt = c["train_teacher"](
            name="global",
            regions="",
            train=sp.outputs["train"],
            val=sp.outputs["val"],
            cache_dir=cache_dir,
            config=global_teacher_config,
            overrides=teacher_overrides,
            checkpoint_dir=checkpoint_dir,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            gpus=gpus_per_teacher,
            weights=teacher_weights,
        )
        gt.set_display_name("train teacher: global (1.2)")
        ge = c["evaluate_teacher"](
            name="global", model=gt.outputs["model"], test=sp.outputs["test"], cache_dir=cache_dir, confusion_top_n=20
        )
        ge.set_display_name("evaluate teacher: global (1.3)")
        gl = c["teacher_logits"](
            name="global",
            regions="",
            weight=global_teacher_weight,
            model=gt.outputs["model"],
            train=sp.outputs["train"],
            cache_dir=cache_dir,
            top_k=logits_top_k,
            student_config=student_config,
        )
        gl.set_display_name("teacher logits: global (1.5)")

        # Phases 2 / 2b: regional teachers in parallel, each from the global one.
        with dsl.ParallelFor(
            items=regional_teachers, name="regional-teachers", parallelism=parallel_regional or None
        ) as item:
            rs = c["regional_split"](
                global_train=sp.outputs["train"],
                global_val=sp.outputs["val"],
                global_test=sp.outputs["test"],
                regions=item.regions,
            )
            rs.set_display_name("regional split, nested in the global one (2.0)")
            rt = c["train_teacher"](
                name=item.teacher,
                regions=item.regions,
                train=rs.outputs["train"],
                val=rs.outputs["val"],
                cache_dir=cache_dir,
                config=item.config,
                overrides=teacher_overrides,
                checkpoint_dir=checkpoint_dir,
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                gpus=gpus_per_teacher,
                init_from=gt.outputs["model"],
            )
            rt.set_display_name("train regional teacher (2.2)")
            # Every teacher is scored on the one global test set (per region too): the gain of a
            # regional teacher over the global one is measured on the same images (plan 2.3 / 2.4).
            re_ = c["evaluate_teacher"](
                name=item.teacher,
                model=rt.outputs["model"],
                test=sp.outputs["test"],
                cache_dir=cache_dir,
                confusion_top_n=20,
            )
            re_.set_display_name("evaluate regional teacher (2.3)")
            rl = c["teacher_logits"](
                name=item.teacher,
                regions=item.regions,
                weight=item.weight,
                model=rt.outputs["model"],
                train=sp.outputs["train"],
                cache_dir=cache_dir,
                top_k=logits_top_k,
                student_config=student_config,
            )
            rl.set_display_name("regional teacher logits (2.5)")

        # Phase 3: soft labels from every teacher (the Collected consumer stays outside any If).
        sl = c["combine_soft_labels"](
            global_logits=gl.outputs["logits"],
            regional_logits=dsl.Collected(rl.outputs["logits"]),
            train=sp.outputs["train"],
            student_config=student_config,
            top_k=logits_top_k,
        )
        sl.set_display_name("combine soft labels (3.2)")
        # Phase 4: the student.
        st = c["train_student"](
            train=sp.outputs["train"],
            val=sp.outputs["val"],
            test=sp.outputs["test"],
            soft_labels=sl.outputs["soft_labels"],
            cache_dir=cache_dir,
            student_config=student_config,
            checkpoint_dir=checkpoint_dir,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            train_ce_control=train_ce_control,
            gpus=gpus_per_student,
            weights=student_weights,
        )
        st.set_display_name("train student: distillation + fine-tuning (4)")

        # Phase 5: calibration and the export gate.
        cal = c["calibrate"](
            model=st.outputs["model"],
            val=sp.outputs["val"],
            test=sp.outputs["test"],
            cache_dir=cache_dir,
            ece_threshold=ece_threshold,
            target_precision=target_precision,
            calibration_objective=calibration_objective,
            min_val_top1=gate_min_val_top1,
            max_ece=gate_max_ece,
            min_coverage=gate_min_coverage,
            min_precision=gate_min_precision,
            gate_profile=cfg["export"]["gates"]["profile"],
        )
        cal.set_display_name("calibrate + quality gate (5)")
        # Phase 6: only a blessed student is exported (TFX-style: blessed, then pushed).
        with dsl.If(cal.outputs["blessed"] == True, name="blessed"):  # noqa: E712 (a KFP condition)
            ex = c["export_tfjs"](
                model=cal.outputs["calibrated"],
                calibration=cal.outputs["calibration"],
                test=sp.outputs["test"],
                cache_dir=cache_dir,
                quantization=quantization,
                sample_images=export_images,
                max_size_mb=gate_max_bundle_mb,
                min_correlation=min_parity_correlation,
                min_agreement=min_parity_agreement,
                weight_shard_mb=weight_shard_mb,
            )
            ex.set_display_name("export to TF.js (6.2)")
            va = c["validate_export"](
                bundle=ex.outputs["bundle"],
                model=cal.outputs["calibrated"],
                test=sp.outputs["test"],
                cache_dir=cache_dir,
                images=export_images,
                min_correlation=min_parity_correlation,
                min_agreement=min_parity_agreement,
                max_size_mb=gate_max_bundle_mb,
                max_latency_ms=gate_max_latency_ms,
                latency_runtime=latency_runtime,
            )
            va.set_display_name("validate TF.js vs PyTorch (6.3)")
            # Release: only a validated bundle, and only if the current release is not better.
            pub = c["publish"](
                bundle=ex.outputs["bundle"],
                model=cal.outputs["calibrated"],
                calibration=cal.outputs["calibration"],
                test=sp.outputs["test"],
                cache_dir=cache_dir,
                export_summary=va.outputs["Output"],
                pipeline_settings=pipeline_settings,
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            )
            pub.set_display_name("publish release (champion / challenger)")
        with dsl.Else(name="not-blessed"):
            sk = c["export_skipped"](reason=cal.outputs["reason"])
            sk.set_display_name("export skipped: not blessed")

        # Phase 7: the reproducibility manifest.
        mf = c["training_manifest"](
            seed=seed,
            git_commit="",
            snapshot_id=snapshot_id,
            global_teacher_config=global_teacher_config,
            regional_teachers=regional_teachers,
            student_config=student_config,
            pipeline_settings=pipeline_settings,
            ingest_audit=ing.outputs["audit"],
            split_stats=sp.outputs["stats"],
            cache_report=cached.outputs["report"],
            baseline_report=base.outputs["report"],
            global_teacher_results=ge.outputs["results"],
            global_teacher_model=gt.outputs["model"],
            regional_teacher_results=dsl.Collected(re_.outputs["results"]),
            regional_teacher_models=dsl.Collected(rt.outputs["model"]),
            soft_labels=sl.outputs["soft_labels"],
            student_model=st.outputs["model"],
            student_metrics=st.outputs["metrics"],
            calibration=cal.outputs["calibration"],
            export_summary=dsl.OneOf(va.outputs["Output"], sk.output),
            release_summary=dsl.OneOf(pub.outputs["Output"], sk.output),
            failure={},  # every input named: ignore_upstream_failure() reads each (kfp 2.17.3)
            run_parameters=rp.output,
            global_teacher_weights=teacher_weights,
            student_weights=student_weights,
            baseline_weights=baseline_weights,
        )
        mf.set_display_name("training manifest (7)")
        if not local:  # a manifest whatever happens upstream: the run itself still ends failed
            mf.ignore_upstream_failure()

        # Kubernetes settings of every task (resources, GPUs, node pools, PVC, secrets,
        # caching, retries); the pod's GPU count follows the torchrun process count.
        apply_platform_to_pipeline(
            cfg["cluster"], accelerator_limits={"train_teacher": gpus_per_teacher, "train_student": gpus_per_student}
        )
        # Each task's image from this config (registry and tag, or digests), not from import time.
        apply_images_to_pipeline(cfg["pipeline"]["images"])

    defaults = {n: p.default for n, p in inspect.signature(plantid_pipeline).parameters.items()}
    # the compiled spec describes every parameter (the KFP UI's run form shows it)
    plantid_pipeline.__doc__ = described_docstring(cfg["pipeline"]["description"], list(defaults))
    return dsl.pipeline(
        name=cfg["pipeline"]["name"],
        description=cfg["pipeline"]["description"],
        pipeline_root=cfg["pipeline"]["root"] or None,
    )(plantid_pipeline)


def compile_pipeline(cfg: dict, output: str) -> str:
    """Compile for cfg's cluster (cluster.kfp_backend); says on stderr what that backend leaves out."""
    from kfp import compiler

    from shared.config.cluster import dropped_features, load_cluster_config

    for note in dropped_features(load_cluster_config(cfg.get("cluster"))):
        print(f"compile: left out {note}", file=sys.stderr)
    compiler.Compiler().compile(build_pipeline(cfg), output)
    return output


def _run_dirs(root: Path, name: str) -> set[Path]:
    return {p for p in root.glob(f"{name}-*") if p.is_dir()}


def this_run_dir(root: Path, name: str, before: set[Path]) -> Path:
    """The run directory kfp.local made for this run: the one that was not there before it
    started (never the newest folder, which an earlier run's touched file could be).
    RuntimeError naming what was found when there is not exactly one."""
    new = sorted(_run_dirs(root, name) - before)
    if len(new) != 1:
        raise RuntimeError(f"expected one new run directory {name}-* under {root} after the run, found {new}")
    return new[0]


def run_local(
    cfg: dict, output: str, runner: "SubprocessRunner | DockerRunner | None" = None, params: dict | None = None
) -> dict:
    """Run the whole DAG with a kfp.local runner (default: SubprocessRunner(use_venv=False));
    return where outputs are. params: run parameters over the compiled defaults (as `submit
    --param` gives them; the manifest records them as overridden).

    The console gets one line per task as it starts and ends (seconds, status, key metric) and
    a closing summary ending with the verdict (the gate, the plan's criteria); everything kfp and
    the tasks print goes to <output>/run.log. A failed run shows the failing task's last lines,
    still writes TRAINING_MANIFEST.yaml (which task failed and why, and what did run) and raises
    shared.run_console.LocalRunFailed. A TF.js bundle is copied out only once it passed validation.

    Long: the run, its failure path and the copying of its results, in order."""
    from kfp import local

    from shared.run_console import RUN_LOG, LocalRunFailed, RunConsole, summary_lines, verdict_of_manifest

    out = Path(output).resolve()
    root = out / "pipeline_root"
    root.mkdir(parents=True, exist_ok=True)
    # a previous run's bundle and manifest must not pass for this run's
    shutil.rmtree(out / "tfjs_model", ignore_errors=True)
    for stale in ("TRAINING_MANIFEST.yaml", "run_summary.json"):
        (out / stale).unlink(missing_ok=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    # tasks print through a pipe: unbuffered, the log shows each line when it happens, and a
    # task killed mid-way still leaves its last lines for the failure report
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    runner = runner if runner is not None else local.SubprocessRunner(use_venv=False)
    console = RunConsole(out / RUN_LOG)
    console.say(
        f"{cfg['pipeline']['name']}: running the DAG with kfp.local ({type(runner).__name__}); "
        f"full log: {console.log_path}"
    )
    t0 = time.time()
    pipe = build_pipeline(cfg, local=True)
    earlier_runs = _run_dirs(root, cfg["pipeline"]["name"])
    try:
        with console.capture():
            local.init(runner=runner, pipeline_root=str(root), raise_on_error=True)
            pipe(**(params or {}))
    except Exception as err:
        console.failure_report(err)
        manifest = _manifest_after_failure(pipe, console, out, err, params or {})
        failed = console.failed[0].name if console.failed else "the run"
        (out / "run_summary.json").write_text(
            json.dumps({"failed": failed, "training_manifest": manifest, "seconds": round(time.time() - t0, 1)}) + "\n"
        )
        console.say(f"TRAINING_MANIFEST.yaml: {manifest or 'not written (see the log)'}")
        # nothing under --output passes for a model: a bundle that did not pass validate_export goes
        validated = any(r.task == "validate-export" and r.status == "SUCCESS" for r in console.runs)
        for run in console.runs:
            if run.task == "export-tfjs" and not validated and run.task_dir and (run.task_dir / "bundle").exists():
                shutil.rmtree(run.task_dir / "bundle")
                console.log(f"removed the unvalidated TF.js bundle {run.task_dir / 'bundle'}")
        console.say("TF.js model: none (the run failed)")
        for line in verdict_of_manifest(manifest):
            console.say(line)
        console.close()
        raise LocalRunFailed(f"{failed} failed; see {console.log_path}") from err
    run_dir = this_run_dir(root, cfg["pipeline"]["name"], earlier_runs)
    summary = {"run_dir": str(run_dir), "seconds": round(time.time() - t0, 1), "outputs": {}}
    if run_dir:
        # A task's directory holds executor_output.json; ParallelFor iterations nest them.
        for marker in sorted(run_dir.rglob("executor_output.json")):
            task = marker.parent
            summary["outputs"][str(task.relative_to(run_dir))] = {
                f.name: str(f)
                for f in sorted(task.iterdir())
                if f.name != "executor_output.json" and not f.name.endswith(".sha256")
            }
    # The two things a user wants from a run, copied to a stable place under --output.
    for task, files in summary["outputs"].items():
        name = task.rsplit("/", 1)[-1]
        if name == "training-manifest" and "manifest" in files:
            src = Path(files["manifest"]) / "TRAINING_MANIFEST.yaml"
            shutil.copyfile(src, out / "TRAINING_MANIFEST.yaml")
            summary["training_manifest"] = str(out / "TRAINING_MANIFEST.yaml")
        # only a bundle that passed validate_export (a task that failed leaves no executor_output.json)
        validated = any(t.rsplit("/", 1)[-1] == "validate-export" for t in summary["outputs"])
        if name == "export-tfjs" and "bundle" in files and validated:
            dst = out / "tfjs_model"
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(files["bundle"], dst)
            summary["tfjs_model"] = str(dst)
    (out / "run_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.log(f"outputs under {summary['run_dir']}:")
    for task, files in summary["outputs"].items():
        for name, path in files.items():
            console.log(f"  {task:40s} {name:16s} {path}")
    for line in summary_lines(summary, out, console.log_path, console.tasks_ok(), len(console.skipped)):
        console.say(line)
    console.close()
    return summary


def _manifest_after_failure(pipe, console, out: Path, error: BaseException, params: dict) -> str | None:
    """After a failed local run, the training-manifest step run here on whatever the tasks that
    ran left (the same component, inputs from shared.manifest.after_failure), with the failed
    task and its error's last line; returns <out>/TRAINING_MANIFEST.yaml, or None when even
    that failed (the log says why; the run's own failure stays the one reported)."""
    from kfp import dsl

    from components.training_manifest import training_manifest
    from shared.config.pipeline_parameters import RUN_PARAMETER_NAMES, overridden
    from shared.manifest.after_failure import FinishedTask, error_line, manifest_inputs
    from shared.manifest.training_manifest import MANIFEST_NAME, phase_of_task

    run = console.failed[0] if console.failed else None
    failure = {
        "task": run.name if run else "the local run",
        "phase": phase_of_task(run.task) if run else None,
        "error": error_line(list(run.lines)) if run else f"{type(error).__name__}: {error}",
    }
    tasks = [FinishedTask(r.task, r.label, r.status, r.task_dir) for r in console.runs]
    manifest_params = ("seed", "snapshot_id", "global_teacher_config", "regional_teachers", "student_config")
    dest = out / "manifest_after_failure"
    shutil.rmtree(dest, ignore_errors=True)
    try:
        defaults = {name: spec.default for name, spec in (pipe.component_spec.inputs or {}).items()}
        given = {**defaults, **params}
        values = {n: given[n] for n in RUN_PARAMETER_NAMES if n in given}  # a reduced pipeline has fewer
        with console.capture():  # its lines go to the log
            training_manifest.python_func(
                git_commit="",
                pipeline_settings=given["pipeline_settings"],
                **{k: given[k] for k in manifest_params},
                run_parameters={"values": values, "overridden": overridden(values, defaults)},
                **manifest_inputs(tasks),
                manifest=dsl.Artifact(uri=str(dest / "manifest")),
                summary=dsl.Markdown(uri=str(dest / "summary.md")),
                run_summary=dsl.Metrics(uri=str(dest / "run_summary")),
                failure=failure,
            )
        shutil.copyfile(dest / "manifest" / MANIFEST_NAME, out / MANIFEST_NAME)
    except Exception as err:  # noqa: BLE001 (the run's own failure is the one to report)
        console.log(f"no manifest after the failure: {type(err).__name__}: {err}")
        return None
    return str(out / MANIFEST_NAME)


def run_containers(cfg: dict, output: str, data_dir: str, params: dict | None = None) -> dict:
    """run_local with kfp.local.DockerRunner: each task in the image the config names for it, with
    the checks and podman handling of components/container_run.py."""
    from kfp import local

    from components.container_run import ContainerRunError, container_session
    from components.images import image_refs

    # the references apply_images_to_pipeline gives the tasks (the pipeline uses all three images)
    images = set(image_refs(cfg["pipeline"]["images"]).values())
    try:
        with container_session(cfg, Path(output).resolve(), Path(data_dir).resolve(), images) as run_cfg:
            return run_local(run_cfg, output, runner=local.DockerRunner(), params=params)
    except ContainerRunError as e:
        raise SystemExit(f"run-containers: {e}") from None


def _add_submission_parsers(sub: "argparse._SubParsersAction") -> None:
    """The `submit` and `schedule` subcommands (components/submission.py does the work)."""
    d = sub.add_parser("serve-demo", help="serve a TF.js bundle's demo page with cross-origin isolation (WASM threads)")
    d.add_argument("--bundle", default="outputs/local/tfjs_model")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=8000)
    s = sub.add_parser("submit", help="compile and submit a run to a KFP server (--dry-run: only show it)")
    h = sub.add_parser("schedule", help="compile and create a recurring run on a KFP server (--dry-run: only show it)")
    for p in (s, h):
        _add_submission_arguments(p)
    s.add_argument("--wait", action="store_true", help="follow the run to its end: exit 0 on SUCCEEDED, else 1")
    s.add_argument(
        "--timeout",
        type=float,
        default=0,
        metavar="SECONDS",
        help="with --wait: stop waiting after this long (exit 1; the run goes on); 0 (default) = until it ends",
    )
    h.add_argument(
        "--cron",
        required=True,
        help="when to run: 5-field cron ('0 3 * * 0': Sundays 03:00; a '0 ' seconds field is put in front) "
        "or KFP's 6-field form with seconds first ('0 0 3 * * 0')",
    )


def _add_submission_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments `submit` and `schedule` share."""
    p.add_argument("--config", default="config/cluster.yaml")
    p.add_argument(
        "--host",
        help="KFP API endpoint, e.g. https://kubeflow.example.org/pipeline (default: $KF_PIPELINES_ENDPOINT)",
    )
    p.add_argument("--experiment", default="plantid")
    p.add_argument("--run-name", help="the run's (or schedule's) name (default: the pipeline's name and the time)")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a pipeline parameter (YAML/JSON value); repeatable",
    )
    p.add_argument(
        "--params",
        action="append",
        default=[],
        metavar="'NAME=VALUE ...'",
        help="several parameters in one string, split on spaces outside brackets and quotes "
        '(make\'s PARAMS): \'quantization=uint8 regional_teachers=[{"teacher": "EU_SW", ...}]\'',
    )
    p.add_argument("--namespace", help="where the run goes (default: the config's, per cluster.mode)")
    p.add_argument("--service-account", help="the run's Kubernetes service account (default: cluster.service_account)")
    p.add_argument("--package", default="pipeline.yaml", help="where the compiled pipeline is written")
    p.add_argument(
        "--dry-run", action="store_true", help="compile, check and print what would be sent; contact nothing"
    )


def _submission_command(args: argparse.Namespace, cfg: dict) -> int:
    """`submit` / `schedule`: compile, plan (components/submission.py), then print or send."""
    from components import submission
    from shared.config.cluster import cluster_problems

    problems = cluster_problems(cfg)
    if problems:
        raise SystemExit("config not fit for the cluster:\n  " + "\n  ".join(problems))
    compile_pipeline(cfg, args.package)
    try:
        items = [i for text in args.params for i in submission.split_params(text)] + args.param
        plan = submission.plan_submission(
            cfg,
            args.package,
            host=args.host,
            experiment=args.experiment,
            run_name=args.run_name or f"{cfg['pipeline']['name']} {time.strftime('%Y-%m-%d %H:%M')}",
            params=submission.raw_params(items),
            namespace=args.namespace,
            service_account=args.service_account,
            cron=getattr(args, "cron", None),
        )
        if args.dry_run:
            print(submission.format_plan(plan))
            print("dry run: nothing was sent")
            return 0
        return submission.execute_plan(plan, wait=getattr(args, "wait", False), timeout_s=getattr(args, "timeout", 0))
    except submission.SubmissionError as e:
        raise SystemExit(f"{args.cmd}: {e}") from None


def _add_release_parser(sub: "argparse._SubParsersAction") -> None:
    """The `release` subcommand: list the published versions or roll current.json back."""
    rel = sub.add_parser("release", help="list published releases (--list) or repoint current.json (--rollback)")
    rel.add_argument("--config", default="config/cluster.yaml")
    rel.add_argument("--uri", help="the release location (default: the config's release.uri)")
    what = rel.add_mutually_exclusive_group(required=True)
    what.add_argument("--list", action="store_true", help="every version, its headline figures, which is current")
    what.add_argument(
        "--rollback",
        nargs="?",
        const="",
        metavar="VERSION",
        help="repoint current.json to VERSION (default: the version current before the present one)",
    )
    rel.add_argument("--reason", default="", help="why (recorded in current.json)")


def _release_command(args: argparse.Namespace, cfg: dict) -> int:
    """`release --list` / `release --rollback [VERSION]` (shared/release/pointer.py does the work)."""
    from shared.release.pointer import list_versions, rollback
    from shared.release.store import ReleaseStoreError, open_store

    try:
        store = open_store(args.uri or cfg["release"]["uri"])
        if args.list:
            rows = list_versions(store)
            if not rows:
                print(f"{store.uri}: no release yet")
            for r in rows:
                h = r["headline"]
                figures = ", ".join(
                    f"{k} {h[k]:.4g}"
                    for k in ("test_top1", "test_ece", "test_coverage", "bundle_mb")
                    if h.get(k) is not None
                )
                print(f"{'*' if r['current'] else ' '} {r['version']}  {figures}  run {r['run']}")
            return 0
        pointer = rollback(store, args.rollback or None, args.reason)
        print(f"{store.uri}: current.json now points to {pointer['version']} ({pointer['reason']})")
        return 0
    except ReleaseStoreError as e:
        raise SystemExit(f"release: {e}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run-local", help="run the DAG locally with kfp.local")
    r.add_argument("--config", default="config/local.yaml")
    r.add_argument("--records", help="a records JSONL to use instead of the bundled data")
    r.add_argument("--output", default="outputs/local")
    k = sub.add_parser(
        "run-containers",
        help="run the DAG locally, each task in its container image (kfp.local.DockerRunner over Docker or podman)",
    )
    k.add_argument("--config", default="config/local.yaml")
    k.add_argument("--records", help="a records JSONL to use instead of the bundled data")
    k.add_argument("--output", default="outputs/containers")
    k.add_argument("--data-dir", default="data", help="mounted read-only: records and their images live here")
    for sp_ in (r, k):
        sp_.add_argument(
            "--param",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="a run parameter over the config's value, as submit --param gives it (the manifest records it)",
        )
    for p in (r, k):
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            dest="set",
            help="override a config value (dotted key, YAML value); repeatable",
        )
    c = sub.add_parser("compile", help="compile the DAG to a KFP pipeline YAML")
    c.add_argument("--config", default="config/cluster.yaml")
    c.add_argument("--output", default="pipeline.yaml")
    w = sub.add_parser(
        "stage-weights",
        help="download and cache every model's pretrained weights (air-gapped "
        "clusters: run where the hub is reachable, then copy the cache)",
    )
    w.add_argument("--config", default="config/cluster.yaml")
    w.add_argument("--cache", help="the weights cache to fill (default: the config's weights.cache_dir)")
    _add_submission_parsers(sub)
    _add_release_parser(sub)
    args = ap.parse_args(argv)

    overrides = {}
    if getattr(args, "records", None):
        overrides = {"data.source": "jsonl", "data.records_uri": str(Path(args.records).resolve())}
    for item in getattr(args, "set", []):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        import yaml

        overrides[key] = yaml.safe_load(value)
    if args.cmd == "serve-demo":
        from shared.export.demo_server import demo_server

        httpd = demo_server(args.bundle, args.host, args.port)
        print(f"demo page: http://{args.host}:{httpd.server_address[1]}/ (cross-origin isolated; Ctrl-C stops it)")
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
        return 0
    cfg = load_pipeline_config(args.config, overrides)
    if args.cmd == "compile":
        print("compiled:", compile_pipeline(cfg, args.output))
    elif args.cmd == "stage-weights":
        from shared.train.pretrained import stage_run

        for r in stage_run(cfg, args.cache):
            if r["pretrained"]:
                print(
                    f"{r['role']:15s} {r['model_id']}: sha256 {r['sha256']}  (pin it as model.sha256 for an "
                    f"offline cluster; {r['cache']}/{r['file']})"
                )
            else:
                print(f"{r['role']:15s} {r['model_id']}: {r['source']}")
    elif args.cmd in ("submit", "schedule"):
        return _submission_command(args, cfg)
    elif args.cmd == "release":
        return _release_command(args, cfg)
    elif args.cmd in ("run-local", "run-containers"):
        from components.submission import parse_params
        from shared.run_console import LocalRunFailed

        try:  # run_local prints the task lines and the closing summary (where the results are)
            if args.cmd == "run-containers":
                run_containers(cfg, args.output, args.data_dir, parse_params(args.param))
            else:
                run_local(cfg, args.output, params=parse_params(args.param))
        except LocalRunFailed:
            return 1  # the console already names the failed task, its last lines and the log
    return 0


if __name__ == "__main__":
    sys.exit(main())
