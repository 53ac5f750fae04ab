"""Pretrained weights (the plan's `pretrained: true`): the model a config names, where its
weights come from, the content-addressed weights cache the training pods read, and the
timm model built from staged weights.

Model ids as users write them: a timm name with or without a pretrained tag
(`vit_base_patch16_384.augreg_in21k_ft_in1k`; `mobilenetv2_100` takes timm's default
tag) or `hf-hub:org/repo`, plus an optional revision (branch, tag or commit of the hub
repository). Sources, in order:
  1. the weights cache: a file staged before for the same id and revision, or the
     file whose sha256 the config pins (an air-gapped cluster pre-seeds the cache);
  2. `pretrained_path`: a local/volume path, a gs:// URI, or an http(s) URL, which
     must come with its sha256;
  3. the hub through huggingface_hub (timm's own source for its tags), honouring
     HF_ENDPOINT (a mirror) and HF_TOKEN, unless the run is offline.
Weights that cannot be had raise WeightsUnavailable naming the model id and every
source tried: nothing trains from random weights unless the config says
`pretrained: false`, and the staged record then says so.

Cache layout (a directory, or gs://bucket/prefix with a local copy per pod):
  blobs/<sha256><ext>                 the weights file, named by its content
  refs/<model id>@<revision>.json     what was staged for that id (sha256, source, timm config)
Weights are data: safetensors, or torch.load(weights_only=True) through timm's loader."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.config.models import model_request, run_requests
from shared.config.weights import WeightsRequest, hub_repo, is_hub_id
from shared.io.atomic import sha256_file, write_json
from shared.io.gcs import is_gs_uri

STAGED_NAME = "staged_weights.json"
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's order: safetensors first
WEIGHT_EXTS = (".safetensors", ".pth.tar", ".pth", ".bin", ".pt")
# Preprocessing keys of a timm pretrained_cfg that the config's own values are compared with.
_VIT_FAMILIES = ("vit", "deit", "eva")


class WeightsUnavailable(RuntimeError):
    """Pretrained weights a config asks for cannot be had (names the model and the sources tried)."""


class WeightsMismatch(ValueError):
    """A weights file is not what it claims: wrong sha256, not loadable as data, or not this model."""


def architecture_of(model_id: str, hub_config: dict | None = None) -> str:
    """The timm architecture a model id builds (hf-hub ids: from their config.json)."""
    if is_hub_id(model_id):
        if not hub_config or "architecture" not in hub_config:
            raise WeightsUnavailable(f"{model_id}: its config.json (architecture) has not been staged")
        return str(hub_config["architecture"])
    from timm.models import split_model_name_tag

    return split_model_name_tag(model_id)[0]


def is_vit(arch: str) -> bool:
    return any(f in arch for f in _VIT_FAMILIES)


def timm_pretrained_cfg(model_id: str, hub_config: dict | None = None) -> tuple[str, dict, dict]:
    """(architecture, pretrained_cfg, model_args) of a model id, without downloading anything
    (hf-hub ids need their config.json). Unknown names and tags name the alternatives."""
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    if is_hub_id(model_id):
        cfg = dict(hub_config or {})
        if "architecture" not in cfg:
            raise WeightsUnavailable(f"{model_id}: config.json has no 'architecture'")
        pcfg = dict(
            cfg.get("pretrained_cfg") or {k: v for k, v in cfg.items() if k not in ("architecture", "model_args")}
        )
        for key in ("num_classes", "label_names"):
            if key in cfg:
                pcfg[key] = cfg[key]
        return str(cfg["architecture"]), pcfg, dict(cfg.get("model_args") or {})
    arch, tag = split_model_name_tag(model_id)
    if not timm.is_model(arch):
        near = timm.list_models(f"*{arch.split('_')[0]}*")[:5]
        raise ValueError(f"model.name {model_id!r}: timm has no architecture {arch!r} (e.g. {near})")
    try:
        pcfg = get_pretrained_cfg(model_id if tag else arch)
    except RuntimeError:  # timm: an invalid tag for a known architecture
        pcfg = None
    if pcfg is None:
        raise ValueError(
            f"model.name {model_id!r}: timm has no pretrained tag {tag!r} for {arch} "
            f"(tags: {timm.list_pretrained(arch + '.*')[:8]})"
        )
    return arch, pcfg.to_dict(), {}


# ---- the weights cache -----------------------------------------------------------------


class WeightsCache:
    """The content-addressed weights cache: a directory, or gs://bucket/prefix (each pod
    keeps a local copy, see shared.data.remote_cache)."""

    def __init__(self, root: str):
        if not root:
            raise ValueError("weights.cache_dir is empty: the staged weights need a cache location")
        self.root = root.rstrip("/")
        self.remote = None
        if is_gs_uri(self.root):
            from shared.data.remote_cache import remote_cache

            self.remote = remote_cache(self.root)
            self.local = self.remote.local
        else:
            self.local = Path(self.root)

    def _get(self, rel: str) -> Path | None:
        p = self.local / rel
        if p.is_file():
            return p
        if self.remote is not None:
            try:
                return self.remote.fetch(rel)
            except FileNotFoundError:
                return None
        return None

    def _put(self, rel: str) -> None:
        if self.remote is not None:
            self.remote.upload(rel)

    def ref(self, req: WeightsRequest) -> dict | None:
        p = self._get(f"refs/{req.ref_name}.json")
        return json.loads(p.read_text()) if p else None

    def blob(self, sha256: str, ext: str) -> Path | None:
        """The cached file with this content, re-hashed (a file changed in place is refused)."""
        p = self._get(f"blobs/{sha256}{ext}")
        if p is None:
            return None
        actual = sha256_file(p)
        if actual != sha256:
            raise WeightsMismatch(
                f"weights cache {self.root}/blobs/{sha256}{ext}: content hashes to {actual}; "
                "the cached file was changed: delete it and stage again"
            )
        return p

    def add(self, path: Path, sha256: str, ext: str) -> str:
        """Store `path` under its content name (atomic); returns the name relative to the root."""
        rel = f"blobs/{sha256}{ext}"
        dest = self.local / rel
        if not dest.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
            os.close(fd)
            try:
                shutil.copyfile(path, tmp)
                os.replace(tmp, dest)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        self._put(rel)
        return rel

    def add_ref(self, req: WeightsRequest, record: dict) -> None:
        rel = f"refs/{req.ref_name}.json"
        write_json(self.local / rel, record)
        self._put(rel)


# ---- staging ---------------------------------------------------------------------------


@dataclass
class _Attempts:
    tried: list[str] = field(default_factory=list)

    def fail(self, source: str, why: str) -> None:
        self.tried.append(f"{source}: {why}")


def weight_ext(name: str) -> str:
    low = name.lower()
    for ext in WEIGHT_EXTS:
        if low.endswith(ext):
            return ext
    return ".pth"  # torch.save files without a telling name: loaded with weights_only=True


def _download_hub(
    repo: str, filenames: tuple[str, ...], revision: str, endpoint: str, tmp: Path, attempts: _Attempts
) -> tuple[Path, str, str] | None:
    """(local file, filename, commit) from the hub, or None with the reasons recorded."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    where = f"hub {endpoint or os.environ.get('HF_ENDPOINT') or 'https://huggingface.co'}/{repo}"
    for filename in filenames:
        try:
            p = Path(
                hf_hub_download(
                    repo, filename, revision=revision or None, endpoint=endpoint or None, cache_dir=str(tmp / "hf")
                )
            )
        except LocalEntryNotFoundError as e:  # a subclass of EntryNotFoundError: the hub did not answer
            cause = e.__cause__ or e.__context__ or e
            attempts.fail(
                f"{where}/{filename}", f"hub unreachable ({type(cause).__name__}: {str(cause).splitlines()[0][:160]})"
            )
            return None
        except EntryNotFoundError:
            attempts.fail(f"{where}/{filename}", "not in the repository")
            continue
        except Exception as e:  # noqa: BLE001 - network, auth, unknown repo/revision: all reasons to name
            attempts.fail(f"{where}/{filename}", f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
            return None
        commit = p.parent.name if p.parent.parent.name == "snapshots" else (revision or "")
        return p, filename, commit
    return None


def _hub_config(repo: str, revision: str, endpoint: str, tmp: Path, attempts: _Attempts) -> dict | None:
    got = _download_hub(repo, ("config.json",), revision, endpoint, tmp, attempts)
    if got is None:
        return None
    try:
        return json.loads(got[0].read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        attempts.fail(f"hub {repo}/config.json", f"not JSON: {e}")
        return None


def _fetch_path(path: str, sha256: str, tmp: Path) -> Path:
    """A local copy of `pretrained_path` (local file, gs:// object or http(s) URL)."""
    if path.startswith(("http://", "https://")):
        import torch.hub

        dest = tmp / ("download" + weight_ext(path.split("?")[0]))
        try:  # torch's downloader checks the hash before the file is moved into place
            torch.hub.download_url_to_file(path, str(dest), hash_prefix=sha256, progress=False)
        except RuntimeError as e:
            if "invalid hash" in str(e):
                raise WeightsMismatch(f"{path}: sha256 differs from the configured one ({e}); refused") from None
            raise
        return dest
    if is_gs_uri(path):
        from shared.io import gcs

        bucket, name = gcs.parse_gs_uri(path)
        dest = tmp / ("download" + weight_ext(name))
        gcs.client().bucket(bucket).blob(name).download_to_filename(str(dest))
        return dest
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return p


def _load_state(path: Path) -> dict:
    """The file's tensors through timm's loader: safetensors, or torch.load(weights_only=True)
    (unwraps {"state_dict"/"model": ...} and a DDP `module.` prefix)."""
    from timm.models import load_state_dict

    try:
        state = load_state_dict(str(path))
    except Exception as e:  # noqa: BLE001 - pickles with code, truncated or foreign files
        raise WeightsMismatch(
            f"{path}: not loadable as weights data (safetensors or torch weights_only): "
            f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        ) from None
    if not isinstance(state, dict) or not state:
        raise WeightsMismatch(f"{path}: holds no tensors")
    return state


def head_rows(state: dict, pcfg: dict) -> int:
    """How many classes the file's classifier has (0 when it carries no head)."""
    classifier = pcfg.get("classifier") or "head"
    names = [classifier] if isinstance(classifier, str) else list(classifier)
    w = state.get(f"{names[0]}.weight")
    return int(w.shape[0]) if w is not None and getattr(w, "ndim", 0) == 2 else 0


def _check_fits(arch: str, pcfg: dict, model_args: dict, path: Path, state: dict, model_id: str) -> dict:
    """Build the architecture with timm's pretrained loader on this file (strict, the file's
    own head size): a file of another model fails here, before any GPU pod starts."""
    import timm

    n = head_rows(state, pcfg)
    try:
        timm.create_model(
            arch, pretrained=True, **{**model_args, "num_classes": n}, pretrained_cfg=_load_cfg(pcfg, path, n)
        )
    except Exception as e:  # noqa: BLE001 - shape/key mismatches surface as several types
        raise WeightsMismatch(
            f"{model_id}: {path.name} does not fit timm's {arch}: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
        ) from None
    return {"tensors": len(state), "head_rows": n}


def _load_cfg(pcfg: dict, path: Path | str, num_classes: int) -> dict:
    """A pretrained_cfg that makes timm read `path` (and nothing from the network)."""
    cfg = {k: v for k, v in pcfg.items() if k not in ("source", "hf_hub_id", "hf_hub_filename", "url", "state_dict")}
    cfg.update(file=str(path), num_classes=num_classes)
    return cfg


def _read_class_names(source: str, tmp: Path) -> list[str]:
    """The head's class names: one per line in head-row order, or a JSON list."""
    if source.startswith(("http://", "https://")):
        import urllib.request

        with urllib.request.urlopen(source, timeout=60) as r:  # noqa: S310 - the operator's config names it
            text = r.read().decode("utf-8")
    else:
        text = _fetch_path(source, "", tmp).read_text(encoding="utf-8")
    text = text.lstrip("\ufeff")
    names = (
        json.loads(text)
        if text.strip().startswith("[")
        else [line.strip() for line in text.splitlines() if line.strip()]
    )
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"model.class_names {source}: expected one name per line or a JSON list of names")
    return names


def stage(
    req: WeightsRequest,
    cache: WeightsCache,
    *,
    endpoint: str = "",
    offline: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Resolve, verify and cache one model's weights; returns the staged record (the
    contract with the training steps and the manifest). Raises WeightsUnavailable naming
    every source tried, or WeightsMismatch for a file that is not what it claims.

    Long: the sources are tried in order inside one temporary directory, and the record
    gathers what each step learnt; the steps themselves are helpers below."""
    req.check()
    base = {"role": req.role, "model_id": req.model_id, "revision": req.revision, "pretrained": req.pretrained}
    if not req.pretrained:
        return {
            **base,
            "architecture": architecture_of(req.model_id) if not is_hub_id(req.model_id) else "",
            "source": "none: model.pretrained is false (trained from scratch)",
            "sha256": "",
        }
    attempts = _Attempts()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="plantid-weights-") as tmp_s:
        tmp = Path(tmp_s)
        ref = cache.ref(req)
        hub_config = (ref or {}).get("hub_config")
        if is_hub_id(req.model_id) and hub_config is None and not offline:
            hub_config = _hub_config(hub_repo(req.model_id), req.revision, endpoint, tmp, attempts)
        if is_hub_id(req.model_id) and hub_config is None:
            raise WeightsUnavailable(_unavailable(req, attempts, offline, "its config.json could not be had"))
        arch, pcfg, model_args = timm_pretrained_cfg(req.model_id, hub_config)
        file, source, sha, ext, commit = None, "", "", "", ""
        # 1. the cache: pinned content first, then what was staged under this id and revision
        for want, want_ext, what in (
            (req.sha256, None, "pinned sha256"),
            ((ref or {}).get("sha256"), (ref or {}).get("ext"), "staged before"),
        ):
            if not want:
                continue
            for e in [want_ext] if want_ext else WEIGHT_EXTS:
                p = cache.blob(want, e)
                if p is not None:
                    file, sha, ext = p, want, e
                    source = (ref or {}).get("source") if what == "staged before" else f"weights cache ({what})"
                    commit = (ref or {}).get("commit", "") if what == "staged before" else ""
                    break
            if file is not None:
                break
            attempts.fail(f"weights cache {cache.root} ({what})", f"no blob {want}")
        # 2. the configured file
        if file is None and req.pretrained_path:
            try:
                file = _fetch_path(req.pretrained_path, req.sha256, tmp)
                source, ext = req.pretrained_path, weight_ext(req.pretrained_path.split("?")[0])
            except WeightsMismatch:
                raise
            except Exception as e:  # noqa: BLE001 - missing file, bucket errors, network
                attempts.fail(f"pretrained_path {req.pretrained_path}", f"{type(e).__name__}: {str(e)[:200]}")
        # 3. the hub
        if file is None and not offline:
            repo, files = _hub_source(req, pcfg)
            if repo:
                got = _download_hub(repo, files, req.revision, endpoint, tmp, attempts)
                if got is not None:
                    file, filename, commit = got
                    source, ext = f"hf-hub:{repo}/{filename}", weight_ext(filename)
            elif pcfg.get("url"):
                attempts.fail(
                    f"timm url {pcfg['url']}",
                    "not a hub repository: download it once, then set model.pretrained_path (and model.sha256)",
                )
            else:
                attempts.fail("hub", f"timm lists no pretrained weights for {req.model_id}")
        elif file is None:
            attempts.fail("hub", "not tried: weights.offline is true")
        if file is None:
            raise WeightsUnavailable(_unavailable(req, attempts, offline))
        sha = sha or sha256_file(file)
        if req.sha256 and sha != req.sha256:
            raise WeightsMismatch(
                f"{req.role} {req.model_id}: {source} hashes to {sha}, but model.sha256 is {req.sha256}; refused"
            )
        state = _load_state(Path(file))
        fit = _check_fits(arch, pcfg, model_args, Path(file), state, req.model_id)
        rel = cache.add(Path(file), sha, ext)
        class_names = (
            _read_class_names(req.class_names, tmp) if req.class_names else list(pcfg.get("label_names") or [])
        )
        if class_names and fit["head_rows"] and len(class_names) != fit["head_rows"]:
            raise WeightsMismatch(
                f"{req.role} {req.model_id}: {len(class_names)} class names but the head has "
                f"{fit['head_rows']} rows ({req.class_names or 'label_names'})"
            )
        record = {
            **base,
            "architecture": arch,
            "source": source,
            "sha256": sha,
            "ext": ext,
            "commit": commit,
            "file": rel,
            "bytes": Path(file).stat().st_size,
            "hub_config": hub_config,
            "pretrained_cfg": _plain_cfg(pcfg),
            "model_args": model_args,
            **fit,
            "class_names": class_names,
            "sources_tried": attempts.tried,
            "cache": cache.root,
            "staged_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        cache.add_ref(
            req,
            {
                k: record[k]
                for k in (
                    "model_id",
                    "revision",
                    "sha256",
                    "ext",
                    "source",
                    "commit",
                    "hub_config",
                    "file",
                    "staged_at",
                )
            },
        )
    log(
        f"staged {req.role} {req.model_id}{'@' + req.revision if req.revision else ''}: {source} "
        f"sha256={sha[:12]} {record['bytes'] / 1e6:.1f} MB, {fit['tensors']} tensors, "
        f"head {fit['head_rows']} rows ({time.time() - t0:.1f} s)"
    )
    return record


def _hub_source(req: WeightsRequest, pcfg: dict) -> tuple[str, tuple[str, ...]]:
    if is_hub_id(req.model_id):
        return hub_repo(req.model_id), HUB_FILES
    repo = pcfg.get("hf_hub_id") or ""
    if repo.endswith("/"):  # older timm configs name the org only
        repo += req.model_id
    files = (pcfg["hf_hub_filename"],) if pcfg.get("hf_hub_filename") else HUB_FILES
    return repo, files


def _unavailable(req: WeightsRequest, attempts: _Attempts, offline: bool, what: str = "") -> str:
    tried = "\n  ".join(attempts.tried) or "(none configured)"
    hint = (
        "set model.pretrained_path (a volume path or gs:// URI), pre-seed weights.cache_dir with "
        "`make stage-weights`, or set weights.hub_endpoint to a reachable mirror"
        if offline
        else "check the model id, HF_ENDPOINT / weights.hub_endpoint and HF_TOKEN"
    )
    return (
        f"{req.role}: pretrained weights for {req.model_id}"
        f"{'@' + req.revision if req.revision else ''} cannot be had{': ' + what if what else ''}; "
        f"tried:\n  {tried}\n{hint}; or say model.pretrained: false to train from scratch on purpose"
    )


def _plain_cfg(pcfg: dict) -> dict:
    keep = (
        "input_size",
        "mean",
        "std",
        "interpolation",
        "crop_pct",
        "num_classes",
        "classifier",
        "license",
        "hf_hub_id",
        "tag",
        "architecture",
    )
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in pcfg.items() if k in keep and v is not None}


# ---- using staged weights --------------------------------------------------------------


def read_staged(path: str | os.PathLike | None) -> dict | None:
    """The staged record a stage_weights artifact holds (a file or a directory with it)."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        p = p / STAGED_NAME
    if not p.is_file():
        raise FileNotFoundError(f"staged weights record not found: {p}")
    return json.loads(p.read_text())


def require_staged(weights: dict | None, model_id: str, role: str) -> dict:
    """The staged weights for `model_id`, or WeightsUnavailable: a model whose config says
    `pretrained: true` never starts from random weights."""
    if not weights or not weights.get("pretrained"):
        raise WeightsUnavailable(
            f"{role} {model_id}: model.pretrained is true but no staged weights were given "
            "(the pipeline's stage_weights step provides them; by hand: `python pipeline.py "
            "stage-weights`); set model.pretrained: false to train from scratch on purpose"
        )
    if weights["model_id"] != model_id:
        raise WeightsUnavailable(
            f"{role}: staged weights are for {weights['model_id']}, but the config names {model_id}"
        )
    return weights


def local_weights_file(staged: dict) -> Path:
    """This pod's copy of the staged file, checked against its sha256."""
    cache = WeightsCache(staged["cache"])
    p = cache.blob(staged["sha256"], staged["ext"])
    if p is None:
        raise WeightsUnavailable(
            f"{staged['role']} {staged['model_id']}: {staged['cache']}/{staged['file']} is "
            "gone from the weights cache (stage_weights put it there): run the pipeline again"
        )
    return p


def classifier_prefix(model: Any) -> str:
    """State-dict prefix of the classifier head ('head', 'classifier', 'head.fc', ...)."""
    name = getattr(model, "pretrained_cfg", {}).get("classifier") or "head"
    return name if isinstance(name, str) else name[0]


def model_kwargs_for(arch: str, dropout: float, image_size: int | None) -> dict:
    """timm kwargs our checkpoints record: dropout, and the image size for ViTs."""
    kw: dict[str, Any] = {"drop_rate": dropout}
    if image_size and is_vit(arch):
        kw["img_size"] = image_size
    return kw


def copy_head_rows(model: Any, src_state: dict, src_classes: list[str], dst_classes: list[str]) -> int:
    """Copy classifier rows of classes present in both lists, by name; returns how many."""
    import torch

    prefix = classifier_prefix(model)
    own = model.state_dict()
    pos = {c: i for i, c in enumerate(src_classes)}
    mapped = 0
    new = {}
    for suffix in ("weight", "bias"):
        key = f"{prefix}.{suffix}"
        if key not in own or key not in src_state or own[key].shape[1:] != src_state[key].shape[1:]:
            continue
        rows = own[key].clone()
        for j, c in enumerate(dst_classes):
            i = pos.get(c)
            if i is not None and i < src_state[key].shape[0]:
                rows[j] = torch.as_tensor(src_state[key][i], dtype=rows.dtype)
                mapped += suffix == "weight"
        new[key] = rows
    model.load_state_dict(new, strict=False)
    return mapped


def create_model(
    name: str,
    num_classes: int,
    dropout: float = 0.0,
    image_size: int | None = None,
    *,
    weights: dict | None = None,
    classes: list[str] | None = None,
    model_args: dict | None = None,
    log: Callable[[str], None] = print,
) -> Any:
    """A timm model for training. With `weights` (a staged record with pretrained true) the
    body comes from the staged file through timm's pretrained loader and the head is new
    for `num_classes` (rows of species the weights' class names share are copied); without,
    the model is randomly initialised and never downloads anything."""
    import timm

    if weights is None or not weights.get("pretrained"):
        arch = name if not is_hub_id(name) else architecture_of(name, (weights or {}).get("hub_config"))
        return timm.create_model(
            arch,
            pretrained=False,
            **{**(model_args or {}), **model_kwargs_for(arch, dropout, image_size), "num_classes": num_classes},
        )
    arch = weights["architecture"]
    path = local_weights_file(weights)
    rows = int(weights.get("head_rows") or 0)
    kwargs = {
        **weights.get("model_args", {}),
        **model_kwargs_for(arch, dropout, image_size),
        "num_classes": num_classes,
    }
    model = timm.create_model(
        arch, pretrained=True, pretrained_cfg=_load_cfg(weights["pretrained_cfg"], path, rows), **kwargs
    )
    if rows == num_classes and num_classes:  # timm kept the pretrained head: ours is a new one
        model.reset_classifier(num_classes)
    info = {"tensors": weights.get("tensors"), "head_rows_mapped": 0}
    if weights.get("class_names") and classes:
        info["head_rows_mapped"] = copy_head_rows(model, _load_state(path), weights["class_names"], classes)
    log(
        f"pretrained {weights['model_id']} ({weights['source']}, sha256 {weights['sha256'][:12]}): "
        f"{info['tensors']} tensors; new head of {num_classes} classes, {info['head_rows_mapped']} rows "
        "copied by species name"
    )
    return model


def preprocessing_mismatches(weights: dict | None, mean: list, std: list, image_size: int) -> list[str]:
    """Where the config's normalisation / input size differ from the weights' own
    (pretrained_cfg): each a warning naming both values."""
    if not weights or not weights.get("pretrained"):
        return []
    pc = weights.get("pretrained_cfg") or {}
    out = []
    for key, ours in (("mean", mean), ("std", std)):
        theirs = pc.get(key)
        # strict=False: this only warns, so lengths that differ must not raise here
        if theirs is not None and any(abs(float(a) - float(b)) > 1e-3 for a, b in zip(ours, theirs, strict=False)):
            out.append(f"normalize.{key} is {list(ours)} but {weights['model_id']} was trained with {list(theirs)}")
    size = (pc.get("input_size") or [None, None, None])[-1]
    if size and int(size) != int(image_size):
        out.append(
            f"image size is {image_size} but {weights['model_id']} was trained at {size} px "
            "(timm resamples ViT position embeddings)"
        )
    return out


def staged_summary(staged: dict | None) -> dict:
    """What the manifest records for a model: id, revision, sha256, source."""
    if not staged:
        return {}
    out = {
        k: staged[k]
        for k in ("model_id", "revision", "commit", "sha256", "source", "architecture")
        if staged.get(k) not in (None, "")
    }
    return {**out, "pretrained": bool(staged.get("pretrained"))}


def stage_run(cfg: dict, cache_dir: str | None = None, log: Callable[[str], None] = print) -> list[dict]:
    """Stage every model of a pipeline config (`make stage-weights`)."""
    w = cfg["weights"]
    cache = WeightsCache(cache_dir or w["cache_dir"])
    return [
        stage(model_request(role, kind, config), cache, endpoint=w["hub_endpoint"], offline=w["offline"], log=log)
        for role, kind, config in run_requests(cfg)
    ]
