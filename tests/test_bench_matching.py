"""The edit-latency benches pair each edit with its own landing, however late."""

from __future__ import annotations

from bench.edit_latency import Edit, match_landings


def test_a_late_landing_counts_at_its_full_latency() -> None:
    # File 0 is edited at 0 s and 0.5 s; the first edit lands 0.9 s late, the second at once.
    edits = [Edit(0, 0.0, 0.001), Edit(0, 0.5, 0.501)]
    matched = match_landings(edits, [(0, 0.901), (0, 0.902)])
    assert [round(latency) for _, latency in matched.samples] == [900, 401]
    assert matched.not_landed == 0


def test_each_landing_pairs_with_one_edit_of_its_own_file() -> None:
    edits = [Edit(0, 0.0, 0.001), Edit(1, 0.010, 0.011), Edit(0, 0.5, 0.501)]
    landings = [(1, 0.014), (0, 0.004), (0, 0.503)]  # in any order
    matched = match_landings(edits, landings)
    assert [round(latency) for _, latency in matched.samples] == [3, 3, 2]


def test_a_landing_before_the_rpc_returned_counts_as_zero() -> None:
    matched = match_landings([Edit(0, 1.0, 1.020)], [(0, 1.005)])
    assert matched.samples == [(1.020, 0.0)]
    assert matched.before_return == 1


def test_an_edit_with_no_landing_is_counted_not_landed() -> None:
    edits = [Edit(0, 0.0, 0.001), Edit(0, 0.5, 0.501)]
    matched = match_landings(edits, [(0, 0.003), (0, 0.499)])  # the second came before the edit
    assert len(matched.samples) == 1
    assert matched.not_landed == 1
