"""`parse_layer_spec`: the one parser of layer lists ("10-19,25") for the CLI and the benchmarks."""

import pytest

from deltamem_agents.core.config import parse_layer_spec


def test_ranges_singles_overlaps_and_spaces():
    assert parse_layer_spec("10-12,25") == (10, 11, 12, 25)
    assert parse_layer_spec(" 3 , 1-2, 2-4 ") == (1, 2, 3, 4)
    assert parse_layer_spec("7-7") == (7,)
    assert parse_layer_spec("") == () and parse_layer_spec(" , ") == ()


@pytest.mark.parametrize("bad", ["10-", "a", "5-3", "-2", "1-2-3", "1.5"])
def test_bad_specs_say_what_is_wrong(bad):
    with pytest.raises(ValueError, match="bad layer spec"):
        parse_layer_spec(bad)
