"""Pretraining windows: a stream re-laid every epoch, or lines packed whole in corpus order; exactly resumable."""

from __future__ import annotations

import pytest

from llamabrew.data.encode import Encoded
from llamabrew.data.streams import LINE_JITTER, StreamBatcher, pack_whole, windows_of
from llamabrew.recipe import OptimConfig

CFG = OptimConfig(micro_batch_size=2, grad_accum=1, learning_rate=1e-3, seed=3)


def docs(n: int = 12) -> list[Encoded]:
    """Documents of different lengths whose tokens name their document: token = 100 * doc + position."""
    out = []
    for d in range(n):
        ids = [100 * d + i for i in range(3 + d % 5)]
        out.append(Encoded(ids, list(ids)))
    return out


def epoch_windows(b: StreamBatcher, corpus: list[Encoded], epoch: int) -> list[list[int]]:
    per = b.micro_batches_per_epoch(corpus, CFG)
    rows = []
    for k in range(per):
        batch = b.batch(corpus, CFG, epoch * per + k)
        for ids, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), strict=True):
            rows.append([t for t, m in zip(ids, mask, strict=True) if m])
    return rows


def test_windows_cut_a_stream_and_keep_labels() -> None:
    wins = windows_of(list(range(25)), 10)
    assert [w.input_ids for w in wins] == [list(range(10)), list(range(10, 20))]  # the short tail is dropped
    assert all(w.labels == w.input_ids for w in wins)
    assert [w.input_ids for w in windows_of(list(range(7)), 10)] == [list(range(7))]  # unless it is all there is


def test_a_shuffled_stream_has_the_same_number_of_full_windows_every_epoch() -> None:
    corpus = docs()
    b = StreamBatcher(pad_id=0, seq_len=8, order="shuffle")
    total = sum(len(d) for d in corpus)
    for epoch in range(4):
        rows = epoch_windows(b, corpus, epoch)
        assert len(rows) == total // 8 and all(len(r) == 8 for r in rows)


def test_shuffle_lays_documents_out_anew_each_epoch_and_is_a_pure_function() -> None:
    corpus = docs()
    b = StreamBatcher(pad_id=0, seq_len=8, order="shuffle")
    e0, e1 = epoch_windows(b, corpus, 0), epoch_windows(b, corpus, 1)
    assert e0 != e1  # other neighbours every epoch: no window to learn by heart
    fresh = StreamBatcher(pad_id=0, seq_len=8, order="shuffle")
    assert epoch_windows(fresh, corpus, 1) == e1  # a resumed run rebuilds the same epoch
    stream = [t for r in e0 for t in r]
    firsts = [t for t in stream if t % 100 == 0]  # where each document starts in the stream
    assert firsts != sorted(firsts)  # documents out of corpus order
    for t, nxt in zip(stream, stream[1:], strict=False):  # inside a document, tokens stay in order
        if nxt % 100:
            assert nxt == t + 1


def lines_of(window: list[int]) -> list[tuple[int, ...]]:
    """A window cut back into its documents (token = 100 * doc + position)."""
    out: list[list[int]] = []
    for t in window:
        if t % 100 == 0:
            out.append([])
        out[-1].append(t)
    return [tuple(line) for line in out]


def test_corpus_order_packs_lines_whole_and_keeps_neighbours_together() -> None:
    corpus = docs(60)
    b = StreamBatcher(pad_id=0, seq_len=48, order="corpus")
    fixed = [w.input_ids for w in pack_whole(corpus, 48)]
    assert [t for w in fixed for t in w] == [t for d in corpus for t in d.input_ids]  # corpus order, nothing lost
    assert all(w[0] % 100 == 0 for w in fixed)  # every window starts at a line
    assert all(len(w) <= 48 for w in fixed)
    e0, e2 = epoch_windows(b, corpus, 0), epoch_windows(b, corpus, 2)
    same_lines = sorted(sorted(lines_of(w)) for w in fixed)
    jittered = freed = 0
    for epoch in (e0, e2):  # even epochs: each window holds the same lines every epoch ...
        assert sorted(sorted(lines_of(w)) for w in epoch) == same_lines
        for w in epoch:  # ... each a few places at most from where the corpus has it, or freely shuffled
            places = [line[0] // 100 for line in lines_of(w)]
            near = all(abs(doc - min(places) - rank) < LINE_JITTER for rank, doc in enumerate(places))
            jittered += near
            freed += not near
    assert jittered and freed  # both kinds of window
    assert e0 != e2  # a new order of windows, and of lines inside windows: no sequence to learn by heart
    assert any(lines_of(w) != sorted(lines_of(w)) for w in e0 + e2)
    assert epoch_windows(StreamBatcher(pad_id=0, seq_len=48, order="corpus"), corpus, 2) == e2


def test_odd_epochs_lay_runs_of_lines_into_new_windows() -> None:
    corpus = docs(400)
    b = StreamBatcher(pad_id=0, seq_len=60, order="corpus")
    fixed_sets = {frozenset(lines_of(w.input_ids)) for w in pack_whole(corpus, 60)}
    e1, e3 = epoch_windows(b, corpus, 1), epoch_windows(b, corpus, 3)
    for epoch in (e1, e3):
        assert len(epoch) == len(fixed_sets)  # every epoch has as many windows
        assert all(w[0] % 100 == 0 and len(w) <= 60 for w in epoch)  # whole lines, from a line's start
        lines = [line for w in epoch for line in lines_of(w)]
        assert len(set(lines)) >= 0.9 * len(corpus)  # (nearly) every line read once
        assert sum(frozenset(lines_of(w)) in fixed_sets for w in epoch) < 0.2 * len(epoch)  # new neighbours
        # most lines still sit close to a line next to them in the corpus (runs kept together)
        close = sum(any(abs(line[0] // 100 - other[0] // 100) == 1 for other in lines_of(w))
                    for w in epoch for line in lines_of(w))
        assert close >= 0.8 * len(lines)
    starts = [[line[0] // 100 for line in lines_of(w)] for w in e1]
    assert [min(s) for s in starts] != sorted(min(s) for s in starts)  # runs laid out of corpus order
    assert e1 != e3
    assert epoch_windows(StreamBatcher(pad_id=0, seq_len=60, order="corpus"), corpus, 3) == e3  # pure function


@pytest.mark.parametrize("order", ["shuffle", "corpus"])
def test_validation_windows_are_the_documents_in_their_own_order(order: str) -> None:
    corpus = docs(5)
    b = StreamBatcher(pad_id=0, seq_len=8, order=order)
    batches = b.eval_batches(corpus, CFG)
    got = [t for bt in batches for row, mask in zip(bt["input_ids"].tolist(), bt["attention_mask"].tolist(),
                                                  strict=True) for t, m in zip(row, mask, strict=True) if m]
    full = [t for d in corpus for t in d.input_ids]
    assert got == full[: len(got)] and len(full) - len(got) < 8
    assert b.eval_batches([], CFG) == []
