from pathlib import Path

import pytest

from shared.config.pipeline import ConfigError, load_pipeline_config, merge_checked

ROOT = Path(__file__).resolve().parents[3]


def test_local_config_loads_and_resolves_paths():
    cfg = load_pipeline_config(ROOT / "config" / "local.yaml")
    assert cfg["cache"]["fetch"]["allow_local_paths"] is True
    assert Path(cfg["cache"]["dir"]).is_absolute()
    assert cfg["cache"]["fetch"]["max_bytes"] == 30_000_000  # default kept


def test_unknown_key_named_with_hint(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("cache:\n  resise: 10\n")
    with pytest.raises(ConfigError, match=r"cache.resise: unknown key \(did you mean resize\?\)"):
        load_pipeline_config(p)


def test_types_checked():
    with pytest.raises(ConfigError, match="cache.resize: expected a number"):
        merge_checked({"cache": {"resize": 1}}, {"cache": {"resize": "big"}})
    with pytest.raises(ConfigError, match="expected true/false"):
        merge_checked({"a": True}, {"a": "yes"})
    assert merge_checked({"a": 1.0}, {"a": "1e-4"}) == {"a": 1e-4}


def test_overrides_and_bad_yaml(tmp_path):
    cfg = load_pipeline_config(None, {"cache.resize": 32, "data.records_uri": "/x.jsonl"})
    assert cfg["cache"]["resize"] == 32 and cfg["data"]["records_uri"] == "/x.jsonl"
    with pytest.raises(ConfigError, match="override cache.nope"):
        load_pipeline_config(None, {"cache.nope": 1})
    p = tmp_path / "bad.yaml"
    p.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline_config(p)


def test_student_resize_is_range_checked_and_reaches_the_student():
    cluster = load_pipeline_config(ROOT / "config" / "cluster.yaml")
    assert (cluster["cache"]["resize"], cluster["cache"]["student_resize"]) == (448, 256)
    local = load_pipeline_config(ROOT / "config" / "local.yaml")
    assert 0 < local["cache"]["student_resize"] <= local["cache"]["resize"]
    assert load_pipeline_config(None)["cache"]["student_resize"] == 0  # off unless asked
    for bad in (449, -1):
        with pytest.raises(ConfigError, match=rf"cache.student_resize: {bad} is outside \[1, cache.resize 448\]"):
            load_pipeline_config(None, {"cache.student_resize": bad})
    from shared.config.student import load_student_config

    s = load_student_config(cluster["student"]["config"], {"data.student_rendition": 256})
    assert s["data"]["student_rendition"] == 256
    with pytest.raises(ConfigError, match="data.student_rendition: must be at least 0"):
        load_student_config(None, {"data.student_rendition": -2})
