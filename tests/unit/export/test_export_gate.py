"""The plan's phase 6 gates (6.4), strict like the plan: quantization "auto" (the first of
fp16, mixed, uint8 under the size limit whose parity passes, saying why each earlier one was
rejected), the parity statistics (Wilson interval, pass probability), the bundle size gate (<), the latency gate
(median single-image ms < bound) measured in headless Chromium with the WASM backend
(or, only when asked, TF.js WASM in Node, labelled as Node), the gate table, and the
validate_export component failing with every reason. The tiny model and images are
tests/unit/export/test_export.py's; three real exports (auto under a generous limit with parity
checked, auto under a limit at the fp16 size, auto with a parity bound nothing can meet)."""

import json
from pathlib import Path

import numpy as np
import pytest

from shared.export.tfjs import (
    AUTO_ORDER,
    ExportError,
    agreement_pass_probability,
    browser_latency,
    check_quantization,
    choose_quantization,
    export_tfjs_bundle,
    gate,
    parity_figures,
    parity_sample_label,
    saved_model_to_tfjs,
    validate_tfjs_bundle,
    validation_summary,
    wilson_interval,
)
from tests.unit.export import test_export
from tests.unit.export.test_export import CALIBRATION, HAVE_CONVERTERS, HAVE_TFJS, _weight_dtypes

tiny_checkpoint = test_export.tiny_checkpoint  # the same tiny model and images (a module-scoped fixture here too)

CHROMIUM = Path("/usr/bin/chromium")
needs_tools = pytest.mark.skipif(
    not (HAVE_CONVERTERS and HAVE_TFJS),
    reason="converter env or shared/export/tfjs/node_modules missing: run scripts/setup_export_env.sh",
)
STRICT = {
    "logits_correlation": ">",
    "top1_agreement": ">=",
    "model_size_mb": "<",
    "latency_ms_median": "<",
    "default_backend_vs_fastest": "<=",
    "labels_match_checkpoint": "==",
    "input_size_matches_checkpoint": "==",
}


# --- fast: the selection rule and the gate rows -------------------------------------------


def _fake_convert(sizes: dict):
    built = []

    def convert(q):
        built.append(q)
        return sizes[q]

    return convert, built


def _fake_check(passing: set):
    checked = []

    def check(q):
        checked.append(q)
        ok = q in passing
        return {"passed": ok, "logits_correlation": 0.999 if ok else 0.9, "top1_agreement": 0.995, "images": 1000}

    return check, checked


def test_auto_tries_fp16_then_mixed_then_uint8_and_says_why_each_was_rejected():
    assert AUTO_ORDER == ("fp16", "mixed", "uint8")
    convert, built = _fake_convert({"fp16": 12.0, "mixed": 8.0, "uint8": 6.5})
    c = choose_quantization(convert, 20.0)
    assert (c["quantization"], built, "mixed_size_mb" in c) == ("fp16", ["fp16"], False)
    assert c["quantization_reason"].startswith("auto: fp16 is the first of fp16, mixed, uint8 to pass")
    # the plan's 9,000-class case: fp16 27.5 MB is over 20 MB, mixed fits and its parity passes
    convert, built = _fake_convert({"fp16": 27.5, "mixed": 16.2, "uint8": 13.8})
    check, checked = _fake_check({"mixed", "uint8"})
    c = choose_quantization(convert, 20.0, check)
    assert (c["quantization"], built, checked) == ("mixed", ["fp16", "mixed"], ["mixed"])  # no parity for > 20 MB
    assert "rejected: fp16: bundle 27.5 MB is not < the 20.0 MB limit" in c["quantization_reason"]
    assert (c["fp16_size_mb"], c["mixed_size_mb"]) == (27.5, 16.2) and "uint8_size_mb" not in c
    assert [t["mode"] for t in c["auto_trials"]] == ["fp16", "mixed"] and c["auto_trials"][1]["passed"]
    # equal is not under (strict); a parity failure moves on to the next mode, with the figures
    convert, built = _fake_convert({"fp16": 20.0, "mixed": 15.0, "uint8": 10.5})
    check, checked = _fake_check({"uint8"})
    c = choose_quantization(convert, 20.0, check)
    assert (c["quantization"], built, checked) == ("uint8", ["fp16", "mixed", "uint8"], ["mixed", "uint8"])
    assert "fp16: bundle 20.0 MB is not < the 20.0 MB limit" in c["quantization_reason"]
    assert (
        "mixed: 15.0 MB, but parity fails (correlation 0.900000, top-1 agreement 0.9950 on 1000 images)"
        in (c["quantization_reason"])
    )
    # nothing passes: the smallest is kept and validate_export's gates fail
    convert, built = _fake_convert({"fp16": 60.0, "mixed": 40.0, "uint8": 30.0})
    c = choose_quantization(convert, 20.0, _fake_check(set())[0])
    assert c["quantization"] == "uint8" and c["uint8_size_mb"] == 30.0 and not c["auto_trials"][-1]["passed"]
    assert "no mode passes; kept uint8" in c["quantization_reason"]
    assert "validate_export's gates fail" in c["quantization_reason"]
    with pytest.raises(ValueError, match="size limit > 0"):
        choose_quantization(convert, 0.0)


def test_agreement_interval_and_the_chance_a_faithful_export_passes():
    lo, hi = wilson_interval(990, 1000)
    assert lo < 0.99 < hi and (round(lo, 4), round(hi, 4)) == (0.9817, 0.9946)  # Wilson, z = 1.96
    assert wilson_interval(1000, 1000)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0
    # the figures the docs quote: the point-estimate gate >= 0.99 with a true agreement of 99.5 % / 98 %
    assert round(agreement_pass_probability(1000, 0.995, 0.99), 4) == 0.9865
    assert round(agreement_pass_probability(1500, 0.995, 0.99), 4) == 0.9955
    assert agreement_pass_probability(1500, 0.98, 0.99) < 0.003
    assert agreement_pass_probability(100, 1.0, 0.99) == 1.0
    with pytest.raises(ValueError, match="n must be > 0"):
        agreement_pass_probability(0, 0.99, 0.99)


def test_parity_figures_count_flips_and_each_models_top1():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 30)).astype(np.float32)
    got = ref + rng.normal(scale=1e-4, size=ref.shape).astype(np.float32)
    got[:3] = ref[:3]
    for i in range(3):  # three flips: the runner-up made top-1
        j = np.argsort(ref[i])[-2]
        got[i, j] = ref[i].max() + 1
    labels = ref.argmax(1)
    p = parity_figures(ref, got, labels, 0.99, 0.99)
    assert (p["images"], p["top1_flips"], p["top1_agreement"]) == (200, 3, 0.985)
    assert p["top1_agreement_ci95"][0] < 0.985 < p["top1_agreement_ci95"][1]
    assert (p["pytorch_test_top1"], p["exported_test_top1"]) == (1.0, 0.985) and not p["passed"]
    assert parity_figures(ref, ref, None, 0.99, 0.99)["passed"] and "pytorch_test_top1" not in parity_figures(ref, ref)
    with pytest.raises(ExportError, match="not this model"):
        parity_figures(ref, got[:, :10])
    with pytest.raises(ValueError, match="199 labels for 200"):
        parity_figures(ref, got, labels[:199])


def test_a_parity_sample_under_1000_images_is_labelled_local():
    assert parity_sample_label(1500, 70000).startswith("plan: 1500 images")
    assert parity_sample_label(52, 52) == "plan: all 52 test images (fewer than 1000)"
    assert parity_sample_label(16, 52).startswith("local: 16 images of 52 test images")


def test_auto_is_an_export_choice_not_a_converter_flag(tiny_checkpoint, tmp_path):
    d, paths = tiny_checkpoint
    assert check_quantization("auto", allow_auto=True) == "auto"
    with pytest.raises(ValueError, match="quantization"):
        saved_model_to_tfjs(tmp_path, tmp_path / "out", "auto")
    with pytest.raises(ValueError, match="auto needs max_size_mb"):  # before any slow step
        export_tfjs_bundle(str(d / "student.pt"), str(tmp_path / "b"), paths, "auto")
    assert not (tmp_path / "b").exists()


def test_gate_rows_are_strict_and_say_why():
    assert gate("model_size_mb", "model size", 20.0, "<", 20.0, "MB")["passed"] is False  # equal fails "<"
    assert gate("logits_correlation", "logits correlation", 0.995, ">", 0.995)["passed"] is False
    row = gate("model_size_mb", "model size", 21.5, "<", 20.0, "MB", note="model.json + weight shards")
    assert row == {
        "gate": "model_size_mb",
        "value": 21.5,
        "operator": "<",
        "bound": 20.0,
        "unit": "MB",
        "passed": False,
        "reason": "model size 21.5 MB is not < 20 MB (model.json + weight shards)",
    }
    row = gate("latency_ms_median", "latency median", None, "<", 5000.0, "ms", note="Chromium not found at /x")
    assert not row["passed"] and row["reason"] == "latency median: not measured (Chromium not found at /x)"
    assert gate("top1_agreement", "top-1 agreement", 0.99, ">=", 0.99)["passed"] is True
    assert gate("latency_ms_median", "latency median", 12.0, "<", 5000.0, "ms")["reason"] is None


# --- real exports ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auto_bundles(tiny_checkpoint):
    """auto under a generous limit (fp16), then under a limit equal to that fp16 size (not
    under it: strict), so uint8 (smaller) is picked."""
    if not (HAVE_CONVERTERS and HAVE_TFJS):
        pytest.skip("converter environment not built")
    d, paths = tiny_checkpoint
    ck = str(d / "student.pt")
    labels = [i % 6 for i in range(len(paths))]
    parity = {"parity_images": paths, "parity_labels": labels}
    roomy = export_tfjs_bundle(ck, str(d / "auto_roomy"), paths, "auto", CALIBRATION, max_size_mb=150.0, **parity)
    tight = export_tfjs_bundle(ck, str(d / "auto_tight"), paths, "auto", CALIBRATION, max_size_mb=roomy["fp16_size_mb"])
    # a correlation bound of 1.0 ("> 1.0") no bundle can meet: every mode is built, checked and rejected
    strict = export_tfjs_bundle(
        ck, str(d / "auto_strict"), paths, "auto", CALIBRATION, max_size_mb=150.0, min_corr=1.0, **parity
    )
    return {"roomy": roomy, "tight": tight, "strict": strict}


@needs_tools
def test_auto_picks_fp16_under_a_generous_limit(auto_bundles):
    r = auto_bundles["roomy"]
    b = Path(r["bundle"])
    assert r["quantization"] == "fp16" and r["quantization_requested"] == "auto" and r["max_size_mb"] == 150.0
    assert r["quantization_reason"] == (
        f"auto: fp16 is the first of fp16, mixed, uint8 to pass (fp16: {r['fp16_size_mb']} MB, parity passed)"
    )
    (trial,) = r["auto_trials"]  # parity checked on the 12 images, and nothing else built
    assert trial["passed"] and trial["images"] == 12 and trial["top1_agreement"] == 1.0
    assert "uint8_size_mb" not in r and "mixed_size_mb" not in r and r["model_size_mb"] == r["fp16_size_mb"]
    assert _weight_dtypes(b) == {"float16"}
    assert json.loads((b / "preprocessing.json").read_text())["quantization"] == "fp16"


@needs_tools
def test_auto_moves_past_fp16_at_the_limit_to_the_first_mode_under_it(auto_bundles):
    r, limit = auto_bundles["tight"], auto_bundles["roomy"]["fp16_size_mb"]
    b = Path(r["bundle"])
    sizes = {t["mode"]: t["size_mb"] for t in r["auto_trials"]}
    print(f"sizes {sizes} MB, limit {limit} MB")
    assert r["fp16_size_mb"] == limit and not r["auto_trials"][0]["passed"]  # at the limit is not under it
    assert [t["mode"] for t in r["auto_trials"]] == list(AUTO_ORDER[: len(r["auto_trials"])])
    picked = r["auto_trials"][-1]
    assert picked["passed"] and picked["mode"] == r["quantization"] and picked["size_mb"] < limit
    assert all(t["size_mb"] >= limit for t in r["auto_trials"][:-1])  # every earlier one: too big
    assert f"rejected: fp16: bundle {limit} MB is not < the {limit} MB limit" in r["quantization_reason"]
    assert r["model_size_mb"] == r[f"{r['quantization']}_size_mb"]
    want = {"mixed": {"float16", "uint8"}, "uint8": {"uint8"}}[r["quantization"]]
    assert _weight_dtypes(b) == want
    assert json.loads((b / "preprocessing.json").read_text())["quantization"] == r["quantization"]
    assert not list(b.parent.glob(".bundle-*"))


@needs_tools
def test_auto_with_parity_that_no_mode_meets_keeps_uint8_and_says_why(auto_bundles):
    r = auto_bundles["strict"]
    assert [t["mode"] for t in r["auto_trials"]] == ["fp16", "mixed", "uint8"]
    assert not any(t["passed"] for t in r["auto_trials"]) and r["quantization"] == "uint8"
    for t in r["auto_trials"]:
        assert f"{t['mode']}: {t['size_mb']} MB, but parity fails" in r["quantization_reason"]
        assert t["logits_correlation"] > 0.99 and t["images"] == 12  # fine figures, an impossible bound
    assert r["fp16_size_mb"] > r["mixed_size_mb"] > r["uint8_size_mb"]
    assert r["head_uint8_weights"] if r["quantization"] == "mixed" else "head_uint8_weights" not in r


@pytest.fixture(scope="module")
def chromium_report(auto_bundles, tiny_checkpoint):
    if not CHROMIUM.exists():
        print(f"SKIP: {CHROMIUM} absent on this machine (Debian's chromium package)")
        pytest.skip(f"{CHROMIUM} absent on this machine")
    d, paths = tiny_checkpoint
    return validate_tfjs_bundle(auto_bundles["roomy"]["bundle"], str(d / "student.pt"), paths, repeats=1)


@needs_tools
def test_latency_is_measured_on_the_page_as_it_opens(chromium_report):
    """No forced backend: the page's own choice (WASM over SwiftShader's software WebGL in headless
    Chromium without a GPU), its cold start, and each backend forced beside it; the gate bounds
    the page's median at 1.5x the fastest backend's."""
    r = chromium_report
    print("Chromium page latency median ms:", r["latency_ms_median"], "by backend:", r["latency_by_backend_ms"])
    assert r["passed"] and not r["reasons"], r["reasons"]
    assert r["latency_runtime"] == "chromium-wasm" and r["latency_backend"] == "wasm"
    assert r["latency_runtime_label"].startswith("headless Chromium, the demo page's own backend choice")
    assert "software-rendered" in r["latency_backend_reason"] or "no WebGL" in r["latency_backend_reason"]
    assert r["latency_cross_origin_isolated"] is True and r["latency_cold_start_ms"] > r["latency_ms_median"]
    assert r["latency_by_backend_ms"]["wasm"] == r["latency_ms_median"]
    assert r["latency_default_vs_fastest"] <= 1.5
    assert r["latency_browser"].startswith("Chromium ") and r["latency_error"] is None
    assert len(r["latency_times_ms"]) == r["latency_runs"] == 20 and r["latency_warmup"] == 3
    assert r["latency_ms_median"] == pytest.approx(float(np.median(r["latency_times_ms"])))
    assert 0 < r["latency_ms_median"] < r["max_latency_ms"] == 5000.0
    assert r["node_latency_ms_median"] > 0  # kept for continuity (the Node parity run)


@needs_tools
def test_gate_table_lists_every_gate_with_strict_operators(chromium_report):
    rows = {g["gate"]: g for g in chromium_report["gates"]}
    assert {k: g["operator"] for k, g in rows.items()} == STRICT
    for g in rows.values():
        assert set(g) == {"gate", "value", "operator", "bound", "unit", "passed", "reason"}
        assert g["passed"] and g["reason"] is None
    assert rows["model_size_mb"]["bound"] == 150.0 and rows["model_size_mb"]["unit"] == "MB"
    assert rows["latency_ms_median"]["value"] == chromium_report["latency_ms_median"]
    assert rows["latency_ms_median"]["bound"] == 5000.0 and rows["latency_ms_median"]["unit"] == "ms"
    assert rows["logits_correlation"]["bound"] == 0.995


@needs_tools
def test_summary_for_the_manifest_carries_the_choice_latency_and_gates(chromium_report, auto_bundles):
    meta = {k: v for k, v in auto_bundles["roomy"].items() if k != "bundle"}
    s = validation_summary(chromium_report, "gs://b/tfjs", meta)
    assert s["status"] == "completed" and s["uri"] == "gs://b/tfjs" and s["passed"]
    assert (s["quantization"], s["quantization_requested"]) == ("fp16", "auto")
    assert s["quantization_reason"] == meta["quantization_reason"] and "uint8_size_mb" not in s
    assert s["latency_runtime"] == "chromium-wasm" and s["latency_ms_median"] == chromium_report["latency_ms_median"]
    passed_gates = [{k: v for k, v in g.items() if v is not None} for g in chromium_report["gates"]]
    assert s["gates"] == passed_gates and s["toolchain"]["tensorflowjs"]  # no None: a KFP parameter
    assert (s["max_size_mb"], s["max_latency_ms"]) == (150.0, 5000.0)
    json.dumps(s)  # a KFP parameter: plain JSON


@needs_tools
def test_missing_chromium_fails_the_latency_gate_clearly(auto_bundles, tiny_checkpoint, tmp_path):
    d, paths = tiny_checkpoint
    nowhere = tmp_path / "no-such-chromium"
    with pytest.raises(ExportError, match=f"Chromium not found at {nowhere}.*latency_runtime='node-wasm'"):
        browser_latency(auto_bundles["roomy"]["bundle"], chromium=nowhere)
    r = validate_tfjs_bundle(
        auto_bundles["roomy"]["bundle"], str(d / "student.pt"), paths[:4], repeats=1, chromium=nowhere
    )
    assert not r["passed"] and len(r["reasons"]) == 1, r["reasons"]
    assert r["reasons"][0].startswith(f"latency median: not measured (Chromium not found at {nowhere}")
    lat = next(g for g in r["gates"] if g["gate"] == "latency_ms_median")
    assert lat["value"] is None and not lat["passed"]
    assert all(g["passed"] for g in r["gates"] if g["gate"] != "latency_ms_median")  # never a silent skip
    assert r["latency_runtime"] == "chromium-wasm" and r["latency_ms_median"] is None
    assert f"Chromium not found at {nowhere}" in r["latency_error"]


@needs_tools
def test_a_latency_bound_of_a_microsecond_fails_the_latency_gate(auto_bundles, tiny_checkpoint):
    d, paths = tiny_checkpoint
    r = validate_tfjs_bundle(
        auto_bundles["roomy"]["bundle"],
        str(d / "student.pt"),
        paths[:4],
        repeats=1,
        max_latency_ms=0.001,
        latency_runtime="node-wasm",
        latency_runs=5,
    )
    assert not r["passed"] and len(r["reasons"]) == 1, r["reasons"]
    assert r["reasons"][0].startswith(f"latency median {r['latency_ms_median']:.6g} ms is not < 0.001 ms (Node")
    assert r["latency_runtime"] == "node-wasm" and r["latency_browser"] is None  # labelled Node, not a browser
    assert r["latency_runtime_label"].startswith("Node (not a browser)") and r["latency_backend"] == "wasm"
    assert len(r["latency_times_ms"]) == 5
    lat = next(g for g in r["gates"] if g["gate"] == "latency_ms_median")
    assert (lat["operator"], lat["bound"], lat["passed"]) == ("<", 0.001, False) and lat["value"] > 0.001


@needs_tools
def test_a_bundle_at_or_over_the_size_limit_fails_the_size_gate(auto_bundles, tiny_checkpoint):
    d, paths = tiny_checkpoint
    small = auto_bundles["tight"]  # mixed or uint8, whichever auto picked
    # exactly the bundle's size is not under it (strict, like the plan's "< 20MB")
    r = validate_tfjs_bundle(
        small["bundle"],
        str(d / "student.pt"),
        paths[:4],
        repeats=1,
        max_size_mb=small["model_size_mb"],
        latency_runtime="node-wasm",
        latency_runs=3,
    )
    assert not r["passed"] and r["reasons"] == [
        f"model size {small['model_size_mb']:.6g} MB is not < {small['model_size_mb']:g} MB "
        "(model.json + weight shards)"
    ]
    size = next(g for g in r["gates"] if g["gate"] == "model_size_mb")
    assert (size["value"], size["operator"], size["bound"], size["passed"]) == (
        pytest.approx(small["model_size_mb"]),
        "<",
        small["model_size_mb"],
        False,
    )


@needs_tools
def test_validate_export_component_reports_every_gate_and_raises_with_every_reason(
    auto_bundles, tiny_checkpoint, tmp_path
):
    from kfp.dsl import Artifact, Dataset, Metrics, Model

    from components.validate_export import validate_export
    from shared.io.records import write_jsonl

    d, paths = tiny_checkpoint
    spec = validate_export.component_spec.inputs
    assert (spec["max_latency_ms"].default, spec["latency_runtime"].default) == (5000.0, "node-wasm")
    write_jsonl(
        tmp_path / "test.jsonl",
        [
            {"image_id": f"i{i:02d}", "taxon": f"Species {i % 6}", "cache_path": Path(p).name}
            for i, p in enumerate(paths)
        ],
    )
    meta = {k: v for k, v in auto_bundles["roomy"].items() if k != "bundle"}

    def run(tag, **kw):
        return validate_export.python_func(
            bundle=Artifact(uri=auto_bundles["roomy"]["bundle"], metadata=dict(meta)),
            model=Model(uri=str(d / "student.pt")),
            test=Dataset(uri=str(tmp_path / "test.jsonl")),
            cache_dir=str(d),
            images=6,
            min_correlation=0.995,
            report=Artifact(uri=str(tmp_path / f"{tag}.json")),
            metrics=Metrics(uri=str(tmp_path / f"{tag}.metrics")),
            latency_runs=3,
            **kw,
        )

    s = run("ok", max_size_mb=20.0)  # the student budget (plan 3.3); defaults: 5000 ms, node-wasm
    assert s["passed"] and s["latency_runtime"] == "node-wasm" and s["quantization"] == "fp16"
    node_gates = {k: v for k, v in STRICT.items() if k != "default_backend_vs_fastest"}  # Chromium only
    assert {g["gate"]: g["operator"] for g in s["gates"]} == node_gates
    with pytest.raises(RuntimeError) as e:
        run("bad", max_size_mb=0.01, max_latency_ms=0.001)
    assert "model size" in str(e.value) and "latency median" in str(e.value) and "(Node" in str(e.value)
    report = json.loads((tmp_path / "bad.json").read_text())
    failed = {g["gate"] for g in report["gates"] if not g["passed"]}
    assert failed == {"model_size_mb", "latency_ms_median"} and len(report["reasons"]) == 2


def test_the_summary_for_the_manifest_holds_no_none():
    """It travels as a KFP parameter (dsl.OneOf into the manifest step), which cannot hold None."""
    from shared.export.tfjs import _without_none

    assert _without_none({"a": None, "b": [1, None, {"c": None, "d": 2}], "e": {"f": None}}) == {
        "b": [1, "", {"d": 2}],
        "e": {},
    }
