"""A pixel budget shared by image decoders in several processes, so that many large images are never
decoded at once: ``--max-pixels`` bounds one image, the budget bounds all of them together.

Images take turns in index order (the order a DataLoader hands them out). Image ``i`` starts decoding when
its pixels fit beside those already held, or when nothing is held (an image above the budget still goes,
alone). Pixels are held until the consumer takes the image (``release``). Because turns follow the order
the consumer reads in, every holder is an image the consumer reads before ``i``: waiting never deadlocks.
"""

from __future__ import annotations

import multiprocessing
from contextlib import contextmanager
from typing import Callable, Iterator

DEFAULT_DECODE_BUDGET = 100_000_000  # pixels decoded and not yet taken by the model, all decoders together


class PixelBudget:
    """Pixels decoded at once across processes (pickled into spawned or forked DataLoader workers);
    ``context``: the multiprocessing context the workers start in (its locks must be that context's)."""

    def __init__(self, pixels: int, context=None) -> None:
        context = context or multiprocessing.get_context()
        self.pixels = pixels
        self._turns = context.Condition()
        self._held = context.RawValue("q", 0)
        self._next = context.RawValue("q", 0)

    @contextmanager
    def turn(self, index: int) -> Iterator[Callable[[int], None]]:
        """Wait for image ``index``'s turn; yields ``reserve(pixels)``, which waits for room and holds them.
        The turn passes to ``index + 1`` once the image has reserved, or on leaving without reserving."""
        with self._turns:
            self._turns.wait_for(lambda: self._next.value >= index)
        passed = False

        def reserve(pixels: int) -> None:
            nonlocal passed
            with self._turns:
                self._turns.wait_for(lambda: self._held.value == 0 or self._held.value + pixels <= self.pixels)
                self._held.value += pixels
                self._next.value = index + 1
                self._turns.notify_all()
            passed = True

        try:
            yield reserve
        finally:
            if not passed:
                with self._turns:
                    self._next.value = index + 1
                    self._turns.notify_all()

    def release(self, pixels: int) -> None:
        """Give back ``pixels`` reserved by a decoder (its image was taken)."""
        if pixels:
            with self._turns:
                self._held.value -= pixels
                self._turns.notify_all()

    @property
    def held(self) -> int:
        """Pixels reserved and not yet released."""
        return self._held.value
