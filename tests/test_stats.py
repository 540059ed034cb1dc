"""RequestStats: the metric identities and pooling across requests."""

from specadapt.stats import RequestStats


def _stats(rounds: list[tuple[int, int, int]]) -> RequestStats:
    s = RequestStats()
    for drafted, accepted, emitted in rounds:
        s.record_round(drafted, accepted, emitted)
    return s


def test_identities_hold_per_request():
    s = _stats([(4, 4, 5), (4, 1, 2), (6, 0, 1)])
    assert s.generated_tokens == s.accepted + s.rounds == 8
    assert s.acceptance_rate == 5 / 14
    assert s.mean_accepted_length == 1 + 5 / 3
    assert s.per_position_acceptance == [2 / 3, 1 / 2, 1.0, 1.0, None, None]


def test_add_pools_counts_as_one_request():
    a, b = _stats([(4, 4, 5), (2, 0, 1)]), _stats([(6, 3, 4)])
    pooled = RequestStats()
    pooled.add(a)
    pooled.add(b)
    whole = _stats([(4, 4, 5), (2, 0, 1), (6, 3, 4)])
    assert pooled.to_dict() == whole.to_dict()
