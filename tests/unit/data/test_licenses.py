import pytest

from shared.data.licenses import (
    UNKNOWN,
    allowed_set,
    is_allowed,
    is_permissive,
    normalize_license,
    parse_license,
)


@pytest.mark.parametrize(
    "raw,canon",
    [
        ("CC0", "CC0"),
        ("cc0-1.0", "CC0"),
        ("CC0 1.0", "CC0"),
        ("cc-zero", "CC0"),
        ("https://creativecommons.org/publicdomain/zero/1.0/", "CC0"),
        ("cc-by-4.0", "CC-BY"),
        ("CC BY 4.0", "CC-BY"),
        ("CC-BY", "CC-BY"),
        ("cc-by-sa-3.0-es", "CC-BY-SA"),
        ("CC BY-SA 4.0", "CC-BY-SA"),
        ("https://creativecommons.org/licenses/by-nc/4.0/", "CC-BY-NC"),
        ("cc-by-nc-nd-4.0", "CC-BY-NC-ND"),
        ("CC_BY_ND", "CC-BY-ND"),
        ("All rights reserved", "ALL-RIGHTS-RESERVED"),
        ("", ""),
    ],
)
def test_normalize(raw, canon):
    assert normalize_license(raw) == canon


def test_permissive_allow_list():
    assert is_permissive("cc-by-sa-4.0") and is_permissive("CC0 1.0")
    assert not is_permissive("cc-by-nc-4.0") and not is_permissive("All rights reserved")
    assert not is_permissive("something else")
    assert allowed_set(["cc-by-4.0", "CC0"]) == {"CC-BY", "CC0"}


@pytest.mark.parametrize(
    "raw,family,version",
    [
        ("https://creativecommons.org/licenses/by-sa/4.0/", "CC-BY-SA", "4.0"),
        ("http://creativecommons.org/licenses/by/4.0/legalcode", "CC-BY", "4.0"),
        ("https://creativecommons.org/licenses/by/4.0/deed.pt_BR", "CC-BY", "4.0"),
        ("https://creativecommons.org/licenses/by/4.0/?ref=chooser-v1", "CC-BY", "4.0"),
        ("creativecommons.org/licenses/by-sa/3.0/es/", "CC-BY-SA", "3.0"),
        ("Creative Commons Attribution-ShareAlike 4.0 International", "CC-BY-SA", "4.0"),
        ("Creative Commons Attribution 3.0 Unported License", "CC-BY", "3.0"),
        ("Creative Commons Attribution 4.0 International Public License", "CC-BY", "4.0"),
        ("CC_BY_4_0", "CC-BY", "4.0"),
        ("CC0_1_0", "CC0", "1.0"),  # GBIF's enumeration
        ("cc by v4", "CC-BY", "4.0"),
        ("CC BY 3.0 IGO", "CC-BY", "3.0"),
        ("cc-by", "CC-BY", None),
        ("CC0 1.0 Universal (CC0 1.0) Public Domain Dedication", "CC0", "1.0"),
        ("Public Domain", "PD", None),
        ("PDM", "PD", None),
        ("public-domain", "PD", None),
        ("https://creativecommons.org/publicdomain/mark/1.0/", "PD", "1.0"),
        ("Public Domain Mark 1.0", "PD", "1.0"),
        ("Dominio P\u00fablico", "PD", None),
        ("(c)", "ALL-RIGHTS-RESERVED", None),
    ],
)
def test_usual_spellings_parse_to_family_and_version(raw, family, version):
    lic = parse_license(raw)
    assert (lic.family, lic.version, lic.restrictions, lic.reason) == (family, version, frozenset(), "")


def test_unknown_text_is_one_family_with_a_reason():
    # before, unrecognised text was upper-cased and returned, so an allow-list entry
    # spelled like the junk (e.g. "MIT") matched it; now all of it is UNKNOWN
    lic = parse_license("something else")
    assert lic.family == UNKNOWN and "'something', 'else'" in lic.reason
    assert normalize_license(None) == "" and parse_license(None).reason == "no licence given"
    assert parse_license("CC BY " + "x" * 600).reason == "longer than 512 characters"


def test_public_domain_is_recognised_but_not_in_the_default_allow_list():
    assert not is_permissive("Public Domain")
    assert is_allowed("public domain mark", ["PD"]) and is_allowed("PDM", ["public domain"])


def test_allow_list_matches_the_parsed_family_exactly():
    # a substring match would let CC-BY-SA (and CC-BY-NC) through an allow-list of CC-BY
    assert not is_allowed("cc-by-sa-4.0", ["CC-BY"])
    assert not is_allowed("CC BY-NC 4.0", ["CC-BY"])
    assert is_allowed("https://creativecommons.org/licenses/by/2.0/", ["cc by 4.0"])
    assert not is_allowed("CC-BY", ["CC-BY-SA"])


@pytest.mark.parametrize("entry", ["MIT", "", "CC", "by-nc", "CC BY 5.0", "cc-by-nc-sa-4.0 or so"])
def test_allow_list_entries_that_are_not_licences_are_refused(entry):
    with pytest.raises(ValueError, match="allow-list entry"):
        allowed_set(["CC0", entry])


def test_allow_list_must_be_a_list():
    # a bare string would be iterated letter by letter ("CC0" -> "C" -> all rights reserved)
    with pytest.raises(TypeError, match="must be a list"):
        allowed_set("CC0")
