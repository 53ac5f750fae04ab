"""Staging of pretrained weights, before the baseline, the teachers and the student: one
CPU task per model resolves its weights (cache, model.pretrained_path, hub), checks the
sha256 and that they load into the architecture, stores them once in the
content-addressed weights cache, and hands the training step a Model artifact naming
them. Weights that cannot be had fail here, before any GPU pod starts."""

from kfp import dsl
from kfp.dsl import Model, Output

from components.images import TRAIN_IMAGE


# The train image: checking that the file loads into the timm architecture needs torch and
# timm (the data image has neither); the task still runs on the CPU node pool.
@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def stage_weights(
    role: str,
    kind: str,
    config: dict,
    overrides: dict,
    weights_cache: str,
    hub_endpoint: str,
    offline: bool,
    weights: Output[Model],
):
    """Stage one model's pretrained weights.

    Args:
        role: Which model of the run, e.g. "global teacher", "student", "baseline" (named in errors
            and in the training manifest).
        kind: How to read `config`: "teacher" (a teacher config; its `model` section), "student" (a
            student config; name + alpha resolve to the timm name) or "baseline" (the pipeline
            config's `baseline` section).
        config: The config holding the model id, revision, pretrained flag, pretrained_path and sha256.
        overrides: Dotted overrides on top of a teacher config (as train_teacher applies them); {} otherwise.
        weights_cache: The content-addressed weights cache: a path on the cache volume or gs://bucket/prefix.
        hub_endpoint: A Hugging Face hub mirror ("" = HF_ENDPOINT or huggingface.co). HF_TOKEN comes from
            the Secret cluster.secrets.hf_token.
        offline: True when the hub cannot be reached: only the cache and pretrained_path are tried.

    Returns:
        weights: A file with the staged record (model id, revision, commit, sha256, source, cached file,
            the weights' own preprocessing); its metadata carries model_id, revision, sha256 and source.
    """
    import os

    from shared.config.models import model_request
    from shared.io.atomic import write_json
    from shared.train.pretrained import STAGED_NAME, WeightsCache, stage, staged_summary

    req = model_request(role, kind, config, overrides)
    record = stage(req, WeightsCache(weights_cache), endpoint=hub_endpoint, offline=offline)
    os.makedirs(weights.path, exist_ok=True)
    write_json(os.path.join(weights.path, STAGED_NAME), record)
    weights.metadata.update({k: str(v) for k, v in staged_summary(record).items()})
