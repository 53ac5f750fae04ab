import numpy as np
import pytest

from shared.calibration import (calibrate, ece_mce, fit_temperature, nll, reliability_diagram_png, report_html,
                                softmax, threshold_search)


def test_ece_mce_hand_computed():
    # bins of width 0.5: (0, .5] holds 0.3, 0.4 (1 of 2 right); (.5, 1] holds 0.8, 0.9, 1.0 (3 of 3 right)
    conf = np.array([0.3, 0.4, 0.8, 0.9, 1.0])
    correct = np.array([1, 0, 1, 1, 1])
    ece, mce, bins = ece_mce(conf, correct, n_bins=2)
    gap_lo = abs(0.5 - 0.35)
    gap_hi = abs(1.0 - 0.9)
    assert ece == pytest.approx(2 / 5 * gap_lo + 3 / 5 * gap_hi)
    assert mce == pytest.approx(gap_lo)
    assert [b["count"] for b in bins] == [2, 3]
    ece, mce, _ = ece_mce(np.array([0.95, 0.95]), np.array([1, 1]), 15)
    assert ece == pytest.approx(0.05) and mce == pytest.approx(0.05)


def _overconfident(n=4000, c=10, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(0, 1, (n, c))
    logits[np.arange(n), labels] += 1.5  # moderately informative...
    return logits * 4.0, labels         # ...but scaled up: over-confident


def test_temperature_scaling_lowers_nll_and_ece():
    logits, labels = _overconfident()
    t = fit_temperature(logits, labels)
    assert t > 2.0  # it undoes most of the x4 scaling
    assert nll(logits, labels, t) < nll(logits, labels) - 0.3
    cal = calibrate(logits, labels, *_overconfident(seed=1))
    assert cal["temperature_applied"] and cal["ece_before"] > 0.1 and cal["ece_after"] < cal["ece_before"] / 2
    assert cal["test_ece_after"] < cal["test_ece_before"]
    well = calibrate(logits / t, labels)
    assert not well["temperature_applied"] and well["temperature"] == 1.0


def test_threshold_search_constructed_case():
    conf = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    correct = np.array([1, 1, 1, 1, 1, 0, 1, 0], bool)
    r = threshold_search(conf, correct, 0.95)
    assert r["threshold_reached"] and r["threshold"] == 0.7 and r["coverage"] == pytest.approx(5 / 8)
    assert r["precision_at_threshold"] == 1.0
    r = threshold_search(conf, correct, 0.8)  # 6 of 7 down to 0.5 is 85.7%
    assert r["threshold"] == 0.5 and r["coverage"] == pytest.approx(7 / 8)
    none = threshold_search(np.array([0.9, 0.8]), np.array([0, 0], bool), 0.95)
    assert not none["threshold_reached"] and "no confidence threshold reaches 95%" in none["message"]
    assert len(r["curve"]) == 101


def test_reports_render():
    logits, labels = _overconfident(500)
    cal = calibrate(logits, labels)
    page = report_html(cal)
    assert page.count("<svg") == 2 and "threshold" in page
    assert reliability_diagram_png(cal["bins_before"], cal["bins_after"])[:4] == b"\x89PNG"
    p = softmax(np.array([[1.0, 2.0, 3.0]]), 2.0)
    assert p.sum() == pytest.approx(1.0)
