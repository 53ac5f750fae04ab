import pytest

from shared.licenses import allowed_set, is_permissive, normalize_license


@pytest.mark.parametrize("raw,canon", [
    ("CC0", "CC0"), ("cc0-1.0", "CC0"), ("CC0 1.0", "CC0"), ("cc-zero", "CC0"),
    ("https://creativecommons.org/publicdomain/zero/1.0/", "CC0"),
    ("cc-by-4.0", "CC-BY"), ("CC BY 4.0", "CC-BY"), ("CC-BY", "CC-BY"),
    ("cc-by-sa-3.0-es", "CC-BY-SA"), ("CC BY-SA 4.0", "CC-BY-SA"),
    ("https://creativecommons.org/licenses/by-nc/4.0/", "CC-BY-NC"),
    ("cc-by-nc-nd-4.0", "CC-BY-NC-ND"), ("CC_BY_ND", "CC-BY-ND"),
    ("All rights reserved", "ALL-RIGHTS-RESERVED"), ("", ""),
])
def test_normalize(raw, canon):
    assert normalize_license(raw) == canon


def test_permissive_allow_list():
    assert is_permissive("cc-by-sa-4.0") and is_permissive("CC0 1.0")
    assert not is_permissive("cc-by-nc-4.0") and not is_permissive("All rights reserved")
    assert not is_permissive("something else")
    assert allowed_set(["cc-by-4.0", "CC0"]) == {"CC-BY", "CC0"}
