from gateway.sequence import SeqEvent, SequenceTracker


def test_sequence_events() -> None:
    t = SequenceTracker()
    seen = [t.observe("a", s) for s in (5, 6, 6, 9, 7, 10, 0, 1)]
    assert seen == [
        (SeqEvent.FIRST, 0),
        (SeqEvent.NEXT, 0),
        (SeqEvent.DUPLICATE, 0),
        (SeqEvent.GAP, 2),
        (SeqEvent.OUT_OF_ORDER, 0),
        (SeqEvent.NEXT, 0),
        (SeqEvent.RESET, 0),
        (SeqEvent.NEXT, 0),
    ]
    assert t.observe("b", 9) == (SeqEvent.FIRST, 0)  # devices are independent
