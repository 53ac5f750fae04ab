"""Inputs at the edges of the parsers, which the broader fuzzing in test_fuzz_inputs.py
does not draw: numbers too long for Python's int conversion, nesting deeper than the
parser's stack, lone-surrogate escapes, YAML anchors that expand forever, non-finite
and out-of-range numbers in every numeric config key, malformed `cluster:` sections,
an artifact truncated with no checksum beside it, an unreadable local file. Each was
a traceback from deep inside (or a silently accepted value) before its guard.

When PLANTID_FUZZ_COUNTS names a file, the number of inputs each fuzz test tried is
added to it (`make bench` reports them)."""

import copy
import json
import math
import os
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.config.cluster import CLUSTER_DEFAULTS, STEPS, load_cluster_config, step_settings
from shared.config.pipeline import DEFAULTS, ConfigError, load_pipeline_config
from shared.config.student import STUDENT_DEFAULTS, load_student_config
from shared.config.teacher import TEACHER_DEFAULTS, load_teacher_config
from shared.data.fetch import FetchPolicy
from shared.data.image_cache import cache_images
from shared.data.ingest import NothingKeptError, ingest, iter_jsonl_source, run_ingest
from shared.distill.soft_labels import SoftLabels
from shared.io.atomic import load_npz, save_npz
from shared.io.records import load_jsonl
from tests.image_server import jpeg_bytes
from tests.reliability.fuzzing import fuzz_settings, write_counts  # noqa: E402

TRIED: Counter = Counter()
# CI runs a fixed 150 examples per test; PLANTID_FUZZ_EXAMPLES=5000 fuzzes deeper with fresh draws
FUZZ = fuzz_settings()
OK_FIELDS = '"image_url": "http://img.example/%s.jpg", "taxon": "Rosa canina", "region": "EU_SW", "license": "CC0"'


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    write_counts(TRIED, "edge_")


def _line(i, image_id_json):
    return "{" + f'"image_id": {image_id_json}, ' + OK_FIELDS % i + "}"


# --- JSONL records ------------------------------------------------------------------

EDGE_LINES = {
    "5000-digit number": ('{"image_id": ' + "1" * 5000 + "}", "invalid_json", "<line>"),
    "nesting 100k deep": ("[" * 100_000 + "]" * 100_000, "invalid_json", "<line>"),
    "lone surrogate id": (_line(1, '"\\ud800"'), "malformed_field", "image_id"),
    "lone surrogate taxon": (
        '{"image_id": "s2", "image_url": "http://img.example/s2.jpg", "taxon": "Rosa \\udfff",'
        ' "region": "EU_SW", "license": "CC0"}',
        "malformed_field",
        "taxon",
    ),
    "NUL in a field": (_line(3, '"a\\u0000b"'), "malformed_field", "image_id"),
}


def test_edge_jsonl_lines_are_rejected_by_line_and_the_step_writes_its_outputs(tmp_path):
    names = list(EDGE_LINES)
    lines = [EDGE_LINES[n][0] for n in names] + [_line(9, '"good"')]
    src = tmp_path / "records.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = {k: str(tmp_path / f"{k}.out") for k in ("records", "audit", "rejections")}
    audit = run_ingest("jsonl", str(src), None, None, 0, out["records"], out["audit"], out["rejections"])
    assert audit["records_kept"] == 1 and [r["image_id"] for r in load_jsonl(out["records"])] == ["good"]
    rejected = {r["locator"]: (r["reason"], r["field"]) for r in load_jsonl(out["rejections"])}
    assert rejected == {f"records.jsonl:{i}": EDGE_LINES[n][1:] for i, n in enumerate(names, 1)}


HOSTILE_TEXT = st.sampled_from(
    [
        "\\ud800",
        "\\udfff",
        "\\u0000",
        "\\u202e",
        "\\ufeff",
        "\\r",
        "\\n",
        "\\t",
        "\u00e9",
        "\U0001f331",
        "../../etc/passwd",
        "x" * 5000,
    ]
)
HOSTILE_ATOM = st.one_of(
    st.integers(4301, 6000).map(lambda n: "9" * n),  # too long to convert to int
    st.integers(1000, 50_000).map(lambda d: "[" * d + "]" * d),  # too deep to parse
    st.integers(1000, 50_000).map(lambda d: '{"a":' * d + "1" + "}" * d),
    st.lists(HOSTILE_TEXT, min_size=1, max_size=3).map(lambda xs: '"' + "".join(xs) + '"'),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-0", "1.0", "true", "null", "[]", "{}", '""']),
)
FIELDS = ("image_id", "image_url", "taxon", "region", "license", "width", "height", "observation_id", "source")


@st.composite
def edge_line(draw):
    """A record line whose fields (or whole line) are edge atoms, written as raw JSON text."""
    i = draw(st.integers(0, 10**6))
    if draw(st.booleans()):
        return draw(HOSTILE_ATOM)
    fields = {
        "image_id": f'"r{i}"',
        "image_url": f'"http://img.example/{i}.jpg"',
        "taxon": '"Rosa canina"',
        "region": '"EU_SW"',
        "license": '"CC0"',
    }
    for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True)):
        fields[name] = draw(HOSTILE_ATOM)
    if draw(st.booleans()):  # a duplicate key: JSON takes the last one
        name = draw(st.sampled_from(FIELDS))
        return "{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + f', "{name}": {draw(HOSTILE_ATOM)}' + "}"
    return "{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}"


@FUZZ
@given(lines=st.lists(edge_line(), min_size=1, max_size=6))
def test_fuzzed_edge_jsonl_never_crashes_ingest(tmp_path_factory, lines):
    TRIED["jsonl_lines"] += len(lines)
    d = tmp_path_factory.mktemp("edge")
    src = d / "records.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        res = ingest(iter_jsonl_source(src), min_side=100)
    except NothingKeptError as e:  # every line rejected: a named error carrying the full account
        res = e.result
    assert len(res.records) + len(res.rejections) == len(lines)
    for rej in res.rejections:
        assert rej.locator.startswith("records.jsonl:") and rej.reason and rej.field
    for rec in res.records:  # what is kept can be written back as UTF-8
        json.dumps(rec.to_dict(), ensure_ascii=False).encode("utf-8")
    # and the step's audit and rejections are written whatever came in; records only when some
    # were kept (nothing kept fails the step, naming the reasons, instead of failing split later)
    out = [str(d / n) for n in ("r.jsonl", "audit.json", "rej.jsonl")]
    if res.records:
        run_ingest("jsonl", str(src), None, None, 100, *out)
        assert len(load_jsonl(out[0])) == len(res.records)
    else:
        with pytest.raises(NothingKeptError, match="kept no records"):
            run_ingest("jsonl", str(src), None, None, 100, *out)
    assert len(load_jsonl(out[2])) == len(res.rejections) and os.path.exists(out[1])


# --- YAML config files ----------------------------------------------------------------

LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)
)
EDGE_YAML = {
    "5000-digit number": "training: {batch_size: " + "1" * 5000 + "}\n",
    "nesting 5000 deep": "training: " + "[" * 5000 + "]" * 5000 + "\n",
    "self-referencing anchor": "training: &t {x: *t}\n",
    "billion laughs": "training:\n" + "".join(f"  {ln}\n" for ln in LAUGHS.splitlines()),
}
LOADERS = {"pipeline": load_pipeline_config, "teacher": load_teacher_config, "student": load_student_config}


@pytest.mark.parametrize("case", sorted(EDGE_YAML))
@pytest.mark.parametrize("which", sorted(LOADERS))
def test_edge_yaml_files_name_the_file(tmp_path, which, case):
    p = tmp_path / "edge.yaml"
    p.write_text(EDGE_YAML[case])
    with pytest.raises(ConfigError, match=r"edge\.yaml: "):
        LOADERS[which](str(p))


def _numeric_keys(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _numeric_keys(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield f"{prefix}{k}"


def _nest(dotted, value):
    for key in reversed(dotted.split(".")):
        value = {key: value}
    return value


NUMERIC = {
    "pipeline": sorted(k for k in _numeric_keys(DEFAULTS) if not k.startswith("cluster.")),
    "teacher": sorted(_numeric_keys(TEACHER_DEFAULTS)),
    "student": sorted(_numeric_keys({k: v for k, v in STUDENT_DEFAULTS.items() if k != "teachers"})),
}
HOSTILE_NUMBERS = [float("nan"), float("inf"), float("-inf"), 10**400, "1e400", "nan", 1e308]


@pytest.mark.parametrize("which", sorted(NUMERIC))
def test_non_finite_numbers_are_refused_in_every_numeric_key(which):
    """A NaN threshold compares false with everything: it would silently switch its check off."""
    for key in NUMERIC[which]:
        for value in HOSTILE_NUMBERS:
            try:
                cfg = LOADERS[which](_nest(key, value))
            except ConfigError as e:
                assert str(e).startswith(key.rsplit(".", 1)[0]) and key.rsplit(".", 1)[1] in str(e), (key, e)
                continue
            node = cfg
            for part in key.split("."):
                node = node[part]
            assert math.isfinite(node) and abs(node) <= 1e300, (key, value, node)  # only 1e308 may pass


STUDENT_BAD = [
    ("training.learning_rate", -1e-4),
    ("finetune.learning_rate", 2.0),
    ("training.batch_size", 0),
    ("training.epochs", 0),
    ("training.weight_decay", -0.1),
    ("model.image_size", 0),
    ("model.dropout_rate", 1.0),
    ("distillation.loss_weights.kl_divergence", -0.5),
    ("training.grad_accum_steps", 0),
    ("finetune.label_smoothing", -0.1),
]
TEACHER_BAD = [
    ("training.weight_decay", -0.05),
    ("training.min_lr", -1e-7),
    ("training.gradient_clip", -1.0),
    ("regularization.mixup_alpha", -1.0),
    ("data.num_workers", -2),
]


@pytest.mark.parametrize(
    "which,key,value", [("student", k, v) for k, v in STUDENT_BAD] + [("teacher", k, v) for k, v in TEACHER_BAD]
)
def test_out_of_range_training_values_name_the_key(which, key, value):
    """Accepted before: a negative learning rate or weight decay trains silently wrong, a zero
    batch size or image size fails deep inside the DataLoader or timm."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("training\\.epochs", "training")):
        LOADERS[which](_nest(key, value))


def test_student_teacher_weights_must_not_be_negative():
    with pytest.raises(ConfigError, match=r"teachers\[1\]\.weight"):
        load_student_config({"teachers": [{"path": "a", "weight": 1.0}, {"path": "b", "weight": -0.5}]})


# --- the cluster: section ---------------------------------------------------------------


@pytest.mark.parametrize(
    "section,fragment",
    [
        ({"retry": {"steps": [["train_teacher"]]}}, "cluster.retry.steps: unknown step"),  # was TypeError
        ({"caching": {"split": True, "x": {}}}, "cluster.caching.x: unknown step"),
        ({"kinds": {"cpu": {"node_selector": ["pool"]}}}, "cluster.kinds.cpu.node_selector"),  # was AttributeError
        ({"kinds": {"gpu": {"node_selector": "nvidia-l4"}}}, "cluster.kinds.gpu.node_selector"),
        ({"kinds": {"gpu": {"tolerations": [{"key": 1, "operator": "Exists"}]}}}, "tolerations[0].key"),
        ({"kinds": {"gpu": {"tolerations": [{"key": "a", "toleration_seconds": "soon"}]}}}, "toleration_seconds"),
        ({"image_pull_secrets": [{"name": "regcred"}]}, "cluster.image_pull_secrets"),
    ],
)
def test_malformed_cluster_sections_name_the_key(section, fragment):
    with pytest.raises(ConfigError) as e:
        load_cluster_config(section)
    assert fragment in str(e.value)


def _leaf_paths(d, prefix=()):
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict) and v:
            yield from _leaf_paths(v, prefix + (k,))


CLUSTER_PATHS = sorted(_leaf_paths(CLUSTER_DEFAULTS)) + [
    ("steps", "cache_images"),
    ("caching", "split"),
    ("steps", "split", "cpu_limit"),
]
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 10**6)
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.sampled_from(["8Gi", "500m", "Exists", "NoSchedule", "120s"]),
    lambda c: (
        st.lists(c, max_size=3)
        | st.dictionaries(
            st.text(max_size=6) | st.sampled_from(["key", "operator", "effect", "value", "cpu_request"]), c, max_size=3
        )
    ),
    max_leaves=5,
)


@FUZZ
@given(path=st.sampled_from(CLUSTER_PATHS), value=VALUES)
def test_fuzzed_cluster_sections_are_accepted_or_name_the_key(path, value):
    TRIED["cluster_sections"] += 1
    section = {}
    node = section
    for k in path[:-1]:
        node = node.setdefault(k, {})
    node[path[-1]] = value
    try:
        cl = load_cluster_config(copy.deepcopy(section))
    except ConfigError as e:
        assert str(e).startswith("cluster."), str(e)
        named = [str(k) for k in path]
        assert any(k in str(e) for k in named) or "cluster." in str(e), (path, str(e))
        return
    for step in STEPS:  # what is accepted is usable for every step
        s = step_settings(step, cl)
        assert isinstance(s["resources"], dict) and isinstance(s["node_selector"], dict)
    assert load_cluster_config(cl) == cl


# --- artifacts and local files ------------------------------------------------------------


def test_truncated_npz_without_a_checksum_is_a_named_error(tmp_path):
    """A kill can land between the rename and the checksum write: no sidecar. Truncated too,
    np.load raised zipfile.BadZipFile, which no caller expected."""
    p = tmp_path / "soft_labels.npz"
    save_npz(
        p,
        image_ids=np.array(["a"]),
        indices=np.zeros((1, 2), np.int32),
        values=np.ones((1, 2), np.float16),
        classes=np.array(["x", "y"]),
        temperature=np.float32(3.0),
    )
    os.remove(str(p) + ".sha256")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"soft labels .*soft_labels\.npz is not readable"):
        SoftLabels.load(p)
    with pytest.raises(ValueError, match=r"teacher logits .*soft_labels\.npz is not readable"):
        load_npz(p, "teacher logits")


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux /proc")
def test_unreadable_local_file_fails_its_record_not_the_run(tmp_path):
    """A local catalogue naming a file that cannot be read (EIO here; EACCES for another user's
    file) used to abort the whole cache step as 'cannot write to the image cache'."""
    good = tmp_path / "good.jpg"
    good.write_bytes(jpeg_bytes(220, 200, seed=4))
    recs = [
        {"image_id": "u0", "image_url": "/proc/self/mem", "taxon": "t", "region": "EU_SW", "license": "CC0"},
        {"image_id": "u1", "image_url": str(good), "taxon": "t", "region": "EU_SW", "license": "CC0"},
    ]
    rep = cache_images(
        recs,
        tmp_path / "cache",
        resize=100,
        min_side=100,
        policy=FetchPolicy(allow_local_paths=True),
        workers=1,
        progress=lambda d, t: None,
    )
    assert [r["image_id"] for r in rep.cached] == ["u1"]
    assert rep.fail_counts == {"not_readable": 1}


def test_local_file_reads_are_bounded_even_when_the_size_lies(tmp_path):
    """/proc files report 0 bytes; the read itself stops at max_bytes."""
    from shared.data.fetch import Fetcher, FetchError

    with pytest.raises(FetchError) as e:
        Fetcher(FetchPolicy(allow_local_paths=True, max_bytes=64)).fetch("/proc/self/maps")
    assert e.value.reason == "too_large"
