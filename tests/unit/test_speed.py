import math

from pipeline import speed


def test_probe_times_a_round_of_charting_and_table_writing():
    seconds = speed.probe_seconds(repeats=1)
    assert math.isfinite(seconds) and seconds > 0
    assert speed.probe_seconds(repeats=0) > 0  # at least one round, whatever is asked
