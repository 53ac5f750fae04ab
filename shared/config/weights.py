"""What weights a config's model section asks for: the WeightsRequest (model id, revision,
pretrained_path, sha256, class names) with its config-time checks, and how model ids name a
hub repository. Config loaders check a section through it; shared/train/pretrained.py stages it."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class WeightsRequest:
    """One model of a run whose weights must be staged.

    role: which model ("global teacher", "student", "baseline"), for messages and the manifest.
    model_id: timm name (optionally with a pretrained tag) or hf-hub:org/repo.
    pretrained: False means an explicit training from scratch (nothing is staged).
    revision: hub branch, tag or commit ("" = the repository's default).
    pretrained_path: a local path, gs:// URI or http(s) URL of the weights file.
    sha256: the expected content hash (required for http(s) URLs; pins any source).
    class_names: where the head's class names are (a text file, one name per line in
        head-row order, or a JSON list), for head rows copied by species name."""

    role: str
    model_id: str
    pretrained: bool = True
    revision: str = ""
    pretrained_path: str = ""
    sha256: str = ""
    class_names: str = ""

    def check(self) -> None:
        """Config-time checks; errors name the role and the key."""
        where = f"{self.role}: model"
        if not self.model_id.strip():
            raise ValueError(f"{where}.name is empty")
        if self.sha256 and not _SHA256.match(self.sha256.lower()):
            raise ValueError(f"{where}.sha256: expected 64 hex digits, got {self.sha256!r}")
        if self.pretrained_path.startswith(("http://", "https://")) and not self.sha256:
            raise ValueError(
                f"{where}.pretrained_path is a URL ({self.pretrained_path}): set {where}.sha256 "
                "to the file's sha256 so a changed or tampered download is refused"
            )
        if "://" in self.pretrained_path and not self.pretrained_path.startswith(("http://", "https://", "gs://")):
            raise ValueError(f"{where}.pretrained_path: a path, gs:// URI or http(s) URL, got {self.pretrained_path!r}")

    @property
    def ref_name(self) -> str:
        """The cache's name for this id and revision."""
        raw = f"{self.model_id}@{self.revision or 'default'}"
        return re.sub(r"[^A-Za-z0-9_.@-]+", "_", raw)


def request_from_section(role: str, section: dict, name: str | None = None) -> WeightsRequest:
    """A WeightsRequest from a config's model section (teacher/student `model:`, `baseline:`);
    `name` replaces section["name"] (the student's width-resolved timm name)."""
    return WeightsRequest(
        role=role,
        model_id=str(name or section.get("name") or section.get("model_name") or ""),
        pretrained=bool(section.get("pretrained", True)),
        revision=str(section.get("revision") or ""),
        pretrained_path=str(section.get("pretrained_path") or section.get("weights") or ""),
        sha256=str(section.get("sha256") or "").lower(),
        class_names=str(section.get("class_names") or ""),
    )


def is_hub_id(model_id: str) -> bool:
    return model_id.startswith("hf-hub:")


def hub_repo(model_id: str) -> str:
    return model_id[len("hf-hub:") :].split("@")[0]
