"""The pixel budget across real processes: never more pixels held than the budget, and a consumer that takes
images in index order (as a DataLoader hands them to the model) is never left waiting for good."""

import multiprocessing
import time

from clearclip.io.budget import PixelBudget

CONTEXT = multiprocessing.get_context("fork")


def _decoder(budget: PixelBudget, sizes: list[int], first: int, step: int, skip: set[int], reserved, peak) -> None:
    """Images ``first, first + step, ...`` as one DataLoader worker takes them."""
    for index in range(first, len(sizes), step):
        with budget.turn(index) as reserve:
            if index not in skip:  # a skipped one fails before reserving, e.g. an unreadable header
                reserve(sizes[index])
                peak.value = max(peak.value, budget.held)
            reserved[index] = 1
        time.sleep(0.05)  # decoding


def _consume(budget: PixelBudget, sizes: list[int], workers: int, skip: set[int] = frozenset()) -> int:
    """Decode ``sizes`` in ``workers`` processes (index i in worker i % workers) and take each image in index
    order as the model does, releasing its pixels; returns the peak held."""
    reserved, peak = CONTEXT.RawArray("b", len(sizes)), CONTEXT.RawValue("q", 0)
    processes = [CONTEXT.Process(target=_decoder, args=(budget, sizes, first, workers, skip, reserved, peak))
                 for first in range(workers)]
    for process in processes:
        process.start()
    deadline = time.monotonic() + 20
    for index, size in enumerate(sizes):
        while not reserved[index]:
            assert time.monotonic() < deadline, f"stuck: image {index} never got its pixels"
            time.sleep(0.005)
        time.sleep(0.02)
        budget.release(0 if index in skip else size)
    for process in processes:
        process.join(timeout=20)
        assert process.exitcode == 0
    return peak.value


def test_decoders_never_hold_more_than_the_budget():
    budget = PixelBudget(100)
    assert 90 <= _consume(budget, [60, 30, 50, 40, 10, 90, 20], workers=3) <= 100
    assert budget.held == 0


def test_later_images_never_take_the_room_an_earlier_one_waits_for():
    budget = PixelBudget(100)  # 2..6 would fit beside 0 while 1 waits; then 1 could never fit again
    assert _consume(budget, [50, 60, 10, 10, 10, 10, 10], workers=7) <= 100
    assert budget.held == 0


def test_an_image_above_the_budget_decodes_alone_and_failures_pass_their_turn():
    budget = PixelBudget(100)
    assert _consume(budget, [30, 250, 30, 30], workers=2, skip={2}) == 250
    assert budget.held == 0
