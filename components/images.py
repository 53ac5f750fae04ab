"""Container images the components run in; images/ defines each one.

A component declares which image it runs in with `base_image=DATA_IMAGE`, `TRAIN_IMAGE` or
`EXPORT_IMAGE`. Those are the images' references with the default registry and tag, and they
only say which image a component needs: when the pipeline is built for a config,
`apply_images_to_pipeline` gives every task the reference from that config's `pipeline.images`
(registry and tag, or a digest per image). Nothing is read from the environment or fixed at
import, so one process can compile several configs, each with its own images.

Components import this module at module scope, so it imports the standard library only
(tests/project/test_code_rules.py checks it)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

DEFAULT_REGISTRY = "ghcr.io/plantid"
DEFAULT_TAG = "0.1.0"
# The names components and tests used before images came from the config.
REGISTRY = DEFAULT_REGISTRY
TAG = DEFAULT_TAG

# name -> the Dockerfile under images/ that builds it
IMAGES = {"data": "images/data/Dockerfile", "train": "images/train/Dockerfile", "export": "images/export/Dockerfile"}

# An image digest as registries report it (`docker buildx imagetools inspect`, `crane digest`).
DIGEST_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")


def image(name: str, registry: str = DEFAULT_REGISTRY, tag: str = DEFAULT_TAG, digest: str | None = None) -> str:
    """The reference of image `name`: REGISTRY/plantid-NAME@DIGEST when a digest is given
    (immutable: what was pushed is what runs), else REGISTRY/plantid-NAME:TAG."""
    if name not in IMAGES:
        raise KeyError(f"unknown image {name!r}; images/ defines {sorted(IMAGES)}")
    if digest:
        if not DIGEST_PATTERN.fullmatch(digest):
            raise ValueError(f"image {name!r}: digest must be 'sha256:' and 64 lowercase hex digits, got {digest!r}")
        return f"{registry}/plantid-{name}@{digest}"
    return f"{registry}/plantid-{name}:{tag}"


# What components pass as base_image: which image they run in (see the module doc).
DATA_IMAGE = image("data")
TRAIN_IMAGE = image("train")
EXPORT_IMAGE = image("export")


def image_refs(images_config: Mapping[str, Any]) -> dict[str, str]:
    """{image name: reference} for a config's `pipeline.images` section (registry, tag and the
    optional `digests` mapping; an image with a digest is referenced by it, the others by tag)."""
    digests = images_config.get("digests") or {}
    unknown = set(digests) - set(IMAGES)
    if unknown:
        raise KeyError(f"pipeline.images.digests: unknown image(s) {sorted(unknown)}; images/ defines {sorted(IMAGES)}")
    return {
        name: image(name, str(images_config["registry"]), str(images_config["tag"]), digests.get(name))
        for name in IMAGES
    }


def declared_image(component_spec: Any) -> str:
    """The name of the image a component runs in, from the base_image it declares."""
    declared = {image(name): name for name in IMAGES}
    ref = component_spec.implementation.container.image
    if ref not in declared:
        raise KeyError(
            f"component {component_spec.name!r} runs in {ref!r}; declare one of the project's images "
            f"with base_image=DATA_IMAGE, TRAIN_IMAGE or EXPORT_IMAGE (components/images.py)"
        )
    return declared[ref]


def apply_images_to_pipeline(images_config: Mapping[str, Any]) -> dict[str, str]:
    """Give every task of the pipeline being defined the image of `images_config` (the config's
    `pipeline.images`) that its component declares; call it inside the @dsl.pipeline function.

    The task-level override lands in the compiled spec's executors, which the cluster and
    kfp.local's DockerRunner both run. Returns {task name: image reference}."""
    from kfp.dsl import pipeline_context

    pipeline = pipeline_context.Pipeline.get_default_pipeline()
    if pipeline is None:
        raise RuntimeError("apply_images_to_pipeline: call it inside a @dsl.pipeline function")
    refs = image_refs(images_config)
    applied = {}
    for name, task in pipeline.tasks.items():
        if task.container_spec is None:  # a dsl.importer or a nested pipeline: no image of ours
            continue
        ref = refs[declared_image(task.component_spec)]
        task.set_container_image(ref)
        applied[name] = ref
    return applied
