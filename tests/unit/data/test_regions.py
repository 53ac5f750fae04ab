"""shared/data/regions.py: the one parser of region lists ("EU_NORTH,EU_EAST"), and the
places that read one agree with it."""

import pytest

from shared.config.pipeline import ConfigError
from shared.data.regions import parse_regions, region_list


def test_region_list_keeps_order_and_drops_blanks():
    assert region_list("EU_NORTH,EU_EAST") == ["EU_NORTH", "EU_EAST"]
    assert region_list(" EU_NORTH , ,EU_EAST,") == ["EU_NORTH", "EU_EAST"]
    assert region_list(["EU_SW", " ", ""]) == ["EU_SW"]
    assert region_list("") == region_list(None) == region_list(" , ") == []


def test_parse_regions_is_a_set_or_none_for_all():
    assert parse_regions("EU_NORTH, EU_EAST,EU_NORTH") == {"EU_NORTH", "EU_EAST"}
    assert parse_regions("") is None and parse_regions(None) is None and parse_regions(",") is None


def test_configs_refuse_a_region_list_that_names_no_region():
    from shared.config.teacher import load_teacher_config

    with pytest.raises(ConfigError, match="region_filter"):
        load_teacher_config({"data": {"region_filter": " , "}})
    assert load_teacher_config({"data": {"region_filter": "EU_SW, EU_NORTH"}})["data"]["region_filter"]


def test_student_teacher_weights_match_regions_as_sets():
    from shared.config.student import teacher_weight

    cfg = {"teachers": [{"region_filter": "EU_NORTH, EU_EAST", "weight": 0.2}, {"region_filter": "", "weight": 0.4}]}
    assert teacher_weight(cfg, "EU_EAST,EU_NORTH", 1.0) == 0.2
    assert teacher_weight(cfg, "", 1.0) == 0.4
    assert teacher_weight(cfg, "EU_SW", 1.0) == 1.0
