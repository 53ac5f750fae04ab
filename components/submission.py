"""Submit a compiled pipeline to a Kubeflow Pipelines server with kfp.Client: one run
(`pipeline.py submit` / `make submit`, optionally followed to its end with --wait), a
recurring run (`pipeline.py schedule` / `make schedule`), or only the plan of either
(--dry-run: compiled, checked and printed, nothing contacted).

Where a run goes comes from the config's `cluster:` section unless overridden:
- namespace: shared.config.cluster.run_namespace (multi-user: cluster.namespace, a KFP
  Profile; standalone: cluster.kfp_namespace). Only multi-user installs are given it:
  kfp.Client's `namespace` and create_run_from_pipeline_package(namespace=...) are "used for
  multi-user deployments; for single-user deployments, this should be left as None" (kfp
  2.x docstrings), and a standalone KFP runs every pipeline in its own namespace anyway, so
  there the namespace is only printed;
- service account: cluster.service_account (sent with the run in both modes);
- pipeline root: pipeline.root, sent as the run's runtime pipeline_root ("" = the
  installation's default, nothing sent).

Host: --host, else KF_PIPELINES_ENDPOINT (kfp's own variable). Authentication follows
KFP's usual settings: a bearer token from KF_PIPELINES_TOKEN (e.g. `gcloud auth
print-access-token` behind IAP), the projected service-account token when
KF_PIPELINES_SA_TOKEN_PATH is set (inside a cluster, kfp's
ServiceAccountTokenVolumeCredentials), else what kfp.Client finds itself (IAP client ids
in its env variables, ~/.config/kfp/context.json, the kube config for a port-forward).

Parameters: NAME=VALUE items (--param, or one --params string split on spaces outside
brackets and quotes, so JSON with spaces stays one value); checked against the compiled
package's root inputs (unknown names and values of the wrong type fail, naming the
parameter) before anything is sent. Only the given ones are sent: the others keep the
compiled defaults, which come from the config file.

--wait polls the run every 30 s until a final state; --timeout 0 (the default) sets no limit
of its own: a training run takes days and each step is bounded by its own timeout
(cluster.kinds.*.timeout_s), so a limit here would only stop the waiting, never the run.

A schedule embeds the compiled spec in the recurring run (create_recurring_run takes
pipeline_package_path in kfp 2.x: no pipeline version is uploaded), max_concurrency 1 and
no catch-up (a paused schedule does not backfill missed trainings)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TOKEN_ENV = "KF_PIPELINES_TOKEN"
ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"  # kfp.client.KF_PIPELINES_ENDPOINT_ENV
DEFAULT_ROOT_TEXT = "(the installation's default)"
FINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# parameterType in a compiled spec -> (what Python values fit, how the error names it)
_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "NUMBER_INTEGER": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "NUMBER_DOUBLE": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "STRING": (lambda v: isinstance(v, str), "text"),
    "BOOLEAN": (lambda v: isinstance(v, bool), "true or false"),
    "STRUCT": (lambda v: isinstance(v, dict), "a mapping ({...})"),
    "LIST": (lambda v: isinstance(v, list), "a list ([...])"),
}
# cron fields (KFP's 6-field form, seconds first): name, lowest, highest plain number
_CRON_FIELDS = (
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day", 1, 31),
    ("month", 1, 12),
    ("weekday", 0, 7),
)
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*?/,\-]+$")


class SubmissionError(ValueError):
    """The run cannot be submitted as asked (the message names the argument)."""


# --- parameters ---------------------------------------------------------------------------


def split_params(text: str) -> list[str]:
    """One PARAMS string -> NAME=VALUE items, split on whitespace outside brackets and quotes
    (`a=1 teachers=[{"name": "EU_SW"}]` -> two items); quotes stay in the value (read as YAML)."""
    items: list[str] = []
    buf: list[str] = []
    depth, quote, escaped = 0, "", False
    for ch in text:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch.isspace() and depth <= 0:
            if buf:
                items.append("".join(buf))
            buf, depth = [], 0
            continue
        buf.append(ch)
    if quote or depth > 0:
        raise SubmissionError(f"--params {text!r}: unbalanced {'quote' if quote else 'bracket'}")
    return items + (["".join(buf)] if buf else [])


def raw_params(items: list[str] | None) -> dict[str, str]:
    """`NAME=VALUE` items -> {name: value text}; a later item wins over an earlier one."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not _NAME.match(key.strip()):
            raise SubmissionError(f'--param {item!r}: expected NAME=VALUE (quote a value with spaces: label="a b")')
        out[key.strip()] = value
    return out


def _yaml_value(name: str, text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise SubmissionError(f"--param {name}: value is not valid YAML: {e}") from None


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """`k=v` strings -> {k: v}; values are read as YAML (numbers, true/false, lists, {...})."""
    return {k: _yaml_value(k, v) for k, v in raw_params(items).items()}


def typed_arguments(raw: Mapping[str, str], parameters: Mapping[str, dict]) -> dict[str, Any]:
    """Value texts -> values of each parameter's compiled type, checked (check_arguments).

    A STRING parameter takes its text as written unless YAML reads it as text (a quoted
    value): `snapshot_id=2025-12-20` stays that text, not a date."""
    out: dict[str, Any] = {}
    for name, text in raw.items():
        value = _yaml_value(name, text)
        if parameters.get(name, {}).get("parameterType") == "STRING" and not isinstance(value, str):
            value = text
        out[name] = value
    check_arguments(out, parameters)
    return out


def check_arguments(values: Mapping[str, Any], parameters: Mapping[str, dict]) -> None:
    """Unknown names, and values that do not fit the parameter's compiled type, raise
    SubmissionError naming them."""
    unknown = sorted(set(values) - set(parameters))
    if unknown:
        raise SubmissionError(f"unknown pipeline parameter(s) {unknown}; the pipeline takes {sorted(parameters)}")
    for name, value in values.items():
        ptype = parameters[name].get("parameterType", "")
        fits, what = _TYPES.get(ptype, (lambda v: True, ""))
        if not fits(value):
            raise SubmissionError(f"--param {name}: expected {what} ({ptype}), got {value!r}")


# --- the compiled package -----------------------------------------------------------------


def package_spec(package_path: str | os.PathLike) -> dict:
    """The PipelineSpec document of a compiled pipeline package."""
    p = Path(package_path)
    if not p.is_file():
        raise SubmissionError(f"pipeline package not found: {package_path} (run `make compile` first)")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader where libyaml is there: ~10x faster
    docs = [d for d in yaml.load_all(p.read_text(), Loader=loader) if d]
    spec = next((d for d in docs if "root" in d and "deploymentSpec" in d), None)
    if spec is None:
        raise SubmissionError(
            f"{package_path}: not a compiled KFP pipeline (no root/deploymentSpec); "
            "the Kubernetes-manifest format is for GitOps, not for runs"
        )
    return spec


def pipeline_parameters(package: str | os.PathLike | dict) -> dict[str, dict]:
    """The root input parameters of a compiled pipeline package (its path or package_spec):
    {name: definition}."""
    spec = package if isinstance(package, dict) else package_spec(package)
    return spec["root"].get("inputDefinitions", {}).get("parameters", {})


def package_images(package: str | os.PathLike | dict) -> list[str]:
    """The image references (tag or digest) of the package's executors (its path or
    package_spec), sorted, once each."""
    spec = package if isinstance(package, dict) else package_spec(package)
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    return sorted({e["container"]["image"] for e in executors.values() if e.get("container", {}).get("image")})


# --- where, who and when ------------------------------------------------------------------


def resolve_host(host: str | None, environ: Mapping[str, str] | None = None) -> str:
    """--host, else KF_PIPELINES_ENDPOINT; neither is an error naming both."""
    environ = os.environ if environ is None else environ
    found = host or environ.get(ENDPOINT_ENV, "")
    if not found:
        raise SubmissionError(
            f"no KFP endpoint: give --host URL (make ... KFP_HOST=URL) or set {ENDPOINT_ENV}, "
            "e.g. https://kubeflow.example.org/pipeline or http://localhost:8888 for a port-forward"
        )
    return found


def normalize_cron(expr: str) -> str:
    """A cron expression in KFP's 6-field form (seconds first); a 5-field one gets "0 "
    in front (at second 0). Anything else raises SubmissionError."""
    fields = (expr or "").split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise SubmissionError(
            f"--cron {expr!r}: expected 5 fields (minute hour day month weekday, e.g. '0 3 * * 0') "
            "or KFP's 6 (second first, e.g. '0 0 3 * * 0')"
        )
    for text, (name, low, high) in zip(fields, _CRON_FIELDS, strict=True):
        numbers = [int(n) for n in re.findall(r"(?<![/0-9])[0-9]+", text)]
        if not _CRON_FIELD.match(text) or any(not low <= n <= high for n in numbers):
            raise SubmissionError(f"--cron {expr!r}: the {name} field {text!r} is not {low}-{high}, * or a cron list")
    return " ".join(fields)


# --- the plan -----------------------------------------------------------------------------


@dataclass
class PlanParameter:
    """One pipeline parameter as the run gets it: its compiled type, value and source."""

    name: str
    type: str
    value: Any
    source: str  # "--param" (given on the command line) or "config" (the compiled default)


@dataclass
class SubmissionPlan:
    """Everything a submission or schedule sends, decided before anything is contacted."""

    host: str
    mode: str
    namespace: str  # where the run executes
    client_namespace: str | None  # what kfp.Client gets: the namespace (multi-user) or None
    service_account: str
    pipeline_root: str  # "" = the installation's default
    experiment: str
    run_name: str
    package: str
    images: list[str]
    arguments: dict[str, Any]  # only what was given: the rest keep the compiled defaults
    parameters: list[PlanParameter] = field(default_factory=list)
    cron: str | None = None  # a schedule's 6-field cron expression


def _default_value(definition: dict) -> Any:
    value = definition.get("defaultValue")
    if definition.get("parameterType") == "NUMBER_INTEGER" and isinstance(value, float) and value.is_integer():
        return int(value)  # the spec stores every number as a double
    return value


def plan_submission(
    cfg: dict,
    package_path: str | os.PathLike,
    *,
    host: str | None,
    experiment: str,
    run_name: str,
    params: Mapping[str, str] | None = None,
    namespace: str | None = None,
    service_account: str | None = None,
    cron: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> SubmissionPlan:
    """Check and resolve a submission (or, with `cron`, a schedule) of the compiled package
    for the pipeline config `cfg`; `params` are value texts by name (raw_params). Contacts
    nothing. Namespace and service account come from cfg["cluster"] unless given."""
    from shared.config.cluster import run_namespace

    if not experiment:
        raise SubmissionError("--experiment: a name is required")
    if not run_name:
        raise SubmissionError("--run-name: a name is required")
    cluster, root = cfg["cluster"], cfg["pipeline"].get("root", "")
    spec = package_spec(package_path)
    spec_params = pipeline_parameters(spec)
    arguments = typed_arguments(params or {}, spec_params)
    ns = namespace or run_namespace(cluster)
    return SubmissionPlan(
        host=resolve_host(host, environ),
        mode=cluster["mode"],
        namespace=ns,
        client_namespace=ns if cluster["mode"] == "multi-user" else None,
        service_account=service_account or cluster["service_account"],
        pipeline_root=root or "",
        experiment=experiment,
        run_name=run_name,
        package=str(package_path),
        images=package_images(spec),
        arguments=arguments,
        parameters=[
            PlanParameter(
                name,
                d.get("parameterType", ""),
                arguments[name] if name in arguments else _default_value(d),
                "--param" if name in arguments else "config",
            )
            for name, d in sorted(spec_params.items())
        ],
        cron=normalize_cron(cron) if cron is not None else None,
    )


def _short(value: Any, width: int) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= width else f"{text[: width - 20]}... ({len(text)} chars)"


def format_plan(plan: SubmissionPlan, width: int = 100) -> str:
    """The plan as the dry run prints it; long parameter values are cut at `width` characters."""
    ns_note = "" if plan.client_namespace else " (standalone: where KFP runs it; not sent)"
    rows = [
        ("host", plan.host),
        ("mode", plan.mode),
        ("namespace", f"{plan.namespace}{ns_note}"),
        ("service account", plan.service_account),
        ("pipeline root", plan.pipeline_root or DEFAULT_ROOT_TEXT),
        ("experiment", plan.experiment),
        ("schedule name" if plan.cron else "run name", plan.run_name),
    ]
    if plan.cron:
        rows.append(("cron", f"{plan.cron} (max concurrency 1, no catch-up)"))
    rows.append(("package", plan.package))
    lines = [f"{label + ':':<17}{value}" for label, value in rows]
    lines += ["images:"] + [f"  {ref}" for ref in plan.images]
    lines.append(f"parameters ({len(plan.parameters)}; sent: {len(plan.arguments)}, the rest compiled defaults):")
    w = max((len(p.name) for p in plan.parameters), default=0)
    lines += [f"  {p.name:<{w}}  {p.source:<7}  {_short(p.value, width)}" for p in plan.parameters]
    return "\n".join(lines)


# --- talking to KFP -----------------------------------------------------------------------


def kfp_client(host: str, *, namespace: str | None = None, token: str | None = None) -> Any:
    """A kfp.Client for `host` with the usual KFP authentication (see module doc)."""
    import kfp
    from kfp.client import KF_PIPELINES_SA_TOKEN_ENV, ServiceAccountTokenVolumeCredentials

    kwargs: dict[str, Any] = {"host": host}
    if namespace:
        kwargs["namespace"] = namespace
    token = token or os.environ.get(TOKEN_ENV)
    if token:
        kwargs["existing_token"] = token
    elif os.environ.get(KF_PIPELINES_SA_TOKEN_ENV):
        kwargs["credentials"] = ServiceAccountTokenVolumeCredentials()
    return kfp.Client(**kwargs)


def submit_run(
    host: str,
    package_path: str | os.PathLike,
    *,
    experiment: str,
    run_name: str,
    params: dict[str, Any] | None,
    namespace: str | None = None,
    client: Any = None,
    service_account: str | None = None,
    pipeline_root: str | None = None,
) -> str:
    """Create (or reuse) `experiment` and start a run of the package; return the run id.

    Parameters (values already typed) are checked against the package's inputs first, so
    a typo fails here with its name instead of on the server. `client` replaces the
    kfp.Client built from `host` (tests, or a caller with its own authentication)."""
    if not experiment:
        raise SubmissionError("experiment: a name is required")
    if not run_name:
        raise SubmissionError("run_name: a name is required")
    check_arguments(params or {}, pipeline_parameters(package_path))
    client = client or kfp_client(host, namespace=namespace)
    result = client.create_run_from_pipeline_package(
        str(package_path),
        arguments=dict(params or {}),
        run_name=run_name,
        experiment_name=experiment,
        namespace=namespace,
        pipeline_root=pipeline_root or None,
        service_account=service_account or None,
    )
    return result.run_id


@dataclass
class RunOutcome:
    """How a followed run ended: its final state and the tasks that failed (with errors)."""

    run_id: str
    state: str
    failed_tasks: list[str]
    error: str = ""


def _state(obj: Any) -> str:
    return str(getattr(obj, "state", None) or "UNKNOWN").upper()


def failed_tasks(run: Any) -> list[str]:
    """Display names (and error messages) of a run's failed tasks, innermost first: a failed
    DAG (a task with child tasks) is named only when no leaf task is. Missing fields are skipped."""
    tasks = getattr(getattr(run, "run_details", None), "task_details", None) or []
    failed = [t for t in tasks if _state(t) == "FAILED"]
    leaves = [t for t in failed if not getattr(t, "child_tasks", None)] or failed
    out = []
    for t in leaves:
        name = getattr(t, "display_name", None) or getattr(t, "task_id", None) or "(unnamed task)"
        message = getattr(getattr(t, "error", None), "message", None)
        out.append(f"{name}: {message}" if message else str(name))
    return out


def follow_run(
    client: Any,
    run_id: str,
    *,
    timeout_s: float = 0,
    poll_s: float = 30,
    say: Callable[[str], None] = print,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> RunOutcome:
    """Poll client.get_run until the run reaches a final state (SUCCEEDED, FAILED, CANCELED,
    SKIPPED), saying each state change; timeout_s 0 = no limit, else SubmissionError after
    it (the run goes on on the server). kfp's wait_for_run_completion is not used: it does
    not stop on CANCELED and needs a limit."""
    sleep, clock = sleep or time.sleep, clock or time.monotonic
    start, last = clock(), None
    while True:
        run = client.get_run(run_id)
        state = _state(run)
        if state != last:
            say(f"run {run_id}: {state}")
            last = state
        if state in FINAL_STATES:
            error = getattr(getattr(run, "error", None), "message", None) or ""
            return RunOutcome(run_id, state, failed_tasks(run) if state != "SUCCEEDED" else [], error)
        if timeout_s and clock() - start >= timeout_s:
            raise SubmissionError(
                f"--timeout: run {run_id} still {state} after {timeout_s:g} s (it goes on; follow it in the KFP UI)"
            )
        sleep(poll_s)


def execute_plan(
    plan: SubmissionPlan,
    *,
    wait: bool = False,
    timeout_s: float = 0,
    poll_s: float = 30,
    client: Any = None,
    say: Callable[[str], None] = print,
) -> int:
    """Start the plan's run (or, with plan.cron, its recurring run) and return the exit
    status: 0 once created, or with `wait` 0 on SUCCEEDED and 1 otherwise (naming the
    failed tasks)."""
    client = client or kfp_client(plan.host, namespace=plan.client_namespace)
    if plan.cron:
        say(f"scheduled recurring run: {schedule_run(plan, client)} (cron {plan.cron})")
        return 0
    run_id = submit_run(
        plan.host,
        plan.package,
        experiment=plan.experiment,
        run_name=plan.run_name,
        params=plan.arguments,
        namespace=plan.client_namespace,
        client=client,
        service_account=plan.service_account,
        pipeline_root=plan.pipeline_root,
    )
    say(f"submitted run: {run_id}")
    if not wait:
        return 0
    outcome = follow_run(client, run_id, timeout_s=timeout_s, poll_s=poll_s, say=say)
    say(f"run {run_id} ended: {outcome.state}" + (f" ({outcome.error})" if outcome.error else ""))
    if outcome.state == "SUCCEEDED":
        return 0
    for task in outcome.failed_tasks:
        say(f"  failed task: {task}")
    if not outcome.failed_tasks:
        say("  no failed task reported (see the run in the KFP UI)")
    return 1


def schedule_run(plan: SubmissionPlan, client: Any) -> str:
    """Create the plan's recurring run (cron, max concurrency 1, no catch-up) in its
    experiment (made when missing); return the recurring run's id."""
    if not plan.cron:
        raise SubmissionError("--cron: a schedule needs a cron expression")
    experiment = client.create_experiment(name=plan.experiment, namespace=plan.client_namespace)
    job = client.create_recurring_run(
        experiment_id=experiment.experiment_id,
        job_name=plan.run_name,
        cron_expression=plan.cron,
        max_concurrency=1,
        no_catchup=True,
        params=dict(plan.arguments),
        pipeline_package_path=plan.package,
        pipeline_root=plan.pipeline_root or None,
        service_account=plan.service_account or None,
    )
    return job.recurring_run_id
