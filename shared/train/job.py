"""One teacher training job as the pipeline runs it: a working directory on the
persistent checkpoint volume keyed by run and teacher (so a pod restarted by a
KFP retry resumes from its last checkpoint), one process or torchrun DDP when
the pod has several GPUs, and the best checkpoint copied to the step's output."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from shared.io.atomic import write_json
from shared.io.checkpoint import copy_checkpoint, work_dir


def run_teacher_job(
    name: str,
    config: dict,
    overrides: dict,
    train_path: str,
    val_path: str,
    cache_dir: str,
    checkpoint_dir: str,
    run_id: str,
    gpus: int,
    init_from: str | None,
    out_model: str,
    weights_path: str | None = None,
) -> dict[str, Any]:
    """Train (or resume) a teacher; copy best_model.pt to `out_model`; return its summary.
    `weights_path`: the stage_weights record of its pretrained weights (none for a
    teacher initialised from another)."""
    from shared.train.distributed import launch

    wd = work_dir(checkpoint_dir, run_id, name)
    wd.mkdir(parents=True, exist_ok=True)
    write_json(wd / "job_config.json", {"config": config, "overrides": overrides})
    args = [
        "--config-json",
        str(wd / "job_config.json"),
        "--train-jsonl",
        train_path,
        "--val-jsonl",
        val_path,
        "--cache-dir",
        cache_dir,
        "--out-dir",
        str(wd),
        "--summary-json",
        str(wd / "summary.json"),
    ]
    if init_from:
        args += ["--init-from", init_from]
    if weights_path:
        args += ["--weights-json", weights_path]
    launch(args, nproc=max(1, int(gpus)), module="shared.train.teacher")
    summary = json.loads((wd / "summary.json").read_text())
    best = wd / "best_model.pt"
    if not best.exists():
        raise RuntimeError(f"teacher {name}: training finished without {best}")
    Path(out_model).parent.mkdir(parents=True, exist_ok=True)
    copy_checkpoint(best, out_model)
    logs = wd / "logs"
    summary["work_dir"] = str(wd)
    summary["tensorboard_logs"] = str(logs) if logs.exists() else ""
    return summary


if __name__ == "__main__":  # pragma: no cover - used by hand for debugging
    print(work_dir(*sys.argv[1:4]))
