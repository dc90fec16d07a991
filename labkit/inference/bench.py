"""Measuring the machine you are on: read and copy bandwidth, matmul FLOP/s, decode tokens/s.

Every figure is the fastest of several runs: other programs only ever add time. On a shared or
loaded machine, though, two figures measured at different moments are slowed by different
amounts, and their ratio (measured speed / predicted speed) then says more about the moment than
about the code. :func:`interleaved` takes measurements meant to be compared *together*: each
round runs every task once, in turn, and each task keeps its fastest round, so every best comes
from the same window of time, under the same load. :func:`labkit.inference.roofline.machine`
turns the figures into a card for the roofline's predictors.

Two clocks (:data:`CLOCKS`): ``"wall"``, the time that passed, and ``"thread"``, the CPU time
of the calling thread, which stops while other programs have the core: with torch on one thread
(:func:`threads`) every operation runs on that thread, so a thread-clock figure is what the core
did while it ran our work, however busy the machine. (Memory stalls count: the core waits.)
Everything here runs on the CPU threads torch uses: one thread measures what one core reaches,
not the whole socket.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from labkit import LabkitError, unknown

MIB = 2**20
#: Clock name -> the function read before and after a timed run (see the module docstring).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "thread": time.thread_time}


def clock(kind: str = "wall") -> Callable[[], float]:
    """The clock called ``kind``; the thread clock only while torch runs on one thread (it does
    not count the work of torch's other threads)."""
    if kind not in CLOCKS:
        raise unknown("clock", kind, CLOCKS)
    if kind == "thread" and torch.get_num_threads() != 1:
        raise LabkitError(
            f"the thread clock counts one thread's work, but torch uses {torch.get_num_threads()} "
            "threads; accepted: clock='thread' inside bench.threads(1), or clock='wall'"
        )
    return CLOCKS[kind]


@contextmanager
def threads(n: int | None) -> Iterator[int]:
    """Run a block with ``n`` torch threads (None: leave as is), restoring the count after."""
    before = torch.get_num_threads()
    if n is not None:
        if n < 1:
            raise LabkitError(f"thread count must be >= 1, got {n}")
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def seconds(
    fn: Callable[[], Any], before: Callable[[], Any] | None = None, clock_kind: str = "wall"
) -> float:
    """Time of one call of ``fn`` on the clock ``clock_kind`` (``before`` runs first, untimed)."""
    now = clock(clock_kind)
    if before is not None:
        before()
    t = now()
    fn()
    return now() - t


def best_seconds(
    fn: Callable[[], Any],
    repeats: int = 5,
    warmup: int = 1,
    before: Callable[[], Any] | None = None,
    clock_kind: str = "wall",
) -> float:
    """Fastest wall time of ``fn()`` over ``repeats`` runs (after ``warmup`` untimed runs).

    The minimum, not the mean: noise from other processes only ever adds time. ``before`` runs
    untimed ahead of every run (e.g. :func:`evict_caches`, so ``fn`` reads from memory, as a
    layer does in a model whose other layers have pushed it out of the caches).
    """
    if repeats < 1:
        raise LabkitError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    return min(seconds(fn, before, clock_kind) for _ in range(repeats))


def interleaved(
    tasks: dict[str, Callable[[], float]], rounds: int = 3, warmup: int = 1
) -> dict[str, list[float]]:
    """Run every task once per round, in turn, for ``rounds`` rounds; return each task's times.

    A task is a function returning the seconds of one timed run (e.g. ``lambda:
    seconds(fn)``, or a decode step's time from :func:`measure_decode`). Taking ``min`` of each
    list gives bests from the same window of time, so their ratio does not depend on when the
    machine was busy; comparing the lists round by round shows how much the load moved them.
    ``warmup`` rounds run first and are not kept.
    """
    if rounds < 1 or warmup < 0:
        raise LabkitError(f"rounds must be >= 1 and warmup >= 0, got {rounds} and {warmup}")
    if not tasks:
        raise LabkitError("interleaved needs at least one task")
    times: dict[str, list[float]] = {name: [] for name in tasks}
    for k in range(warmup + rounds):
        for name, task in tasks.items():
            t = float(task())
            if not (math.isfinite(t) and t > 0):
                raise LabkitError(f"task {name!r} returned {t!r}; accepted: seconds > 0")
            if k >= warmup:
                times[name].append(t)
    return times


def evict_caches(nbytes: int = 256 * MIB) -> Callable[[], Any]:
    """A function that reads ``nbytes`` of other data, pushing earlier data out of the CPU caches
    (give it more than the last-level cache holds); pass it as ``best_seconds(before=...)``."""
    if nbytes < MIB:
        raise LabkitError(f"nbytes must be >= 1 MiB, got {nbytes}")
    buffer = torch.ones(nbytes // 4, dtype=torch.float32)
    return lambda: buffer.sum()


def _buffer(nbytes: int) -> torch.Tensor:
    if nbytes < MIB:
        raise LabkitError(f"nbytes must be >= 1 MiB to measure memory, not cache; got {nbytes}")
    return torch.ones(nbytes // 4, dtype=torch.float32)


def read_task(
    nbytes: int = 256 * MIB, before: Callable[[], Any] | None = None, clock_kind: str = "wall"
) -> tuple[int, Callable[[], float]]:
    """``(bytes read, one timed read)``: summing a buffer of ``nbytes`` reads it and writes
    nothing; with ``before=evict_caches(...)`` every read starts from memory, not the cache."""
    src = _buffer(nbytes)
    return src.numel() * 4, lambda: seconds(src.sum, before, clock_kind)


def copy_task(nbytes: int = 256 * MIB, clock_kind: str = "wall") -> tuple[int, Callable[[], float]]:
    """``(bytes moved, one timed copy)``: a copy of ``nbytes`` into another buffer counts the
    bytes read plus the bytes written (the usual "memory bandwidth" figure)."""
    src = _buffer(nbytes)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4, lambda: seconds(lambda: dst.copy_(src), None, clock_kind)


def matmul_task(
    n: int = 1024, dtype: torch.dtype = torch.float32, clock_kind: str = "wall"
) -> tuple[int, Callable[[], float]]:
    """``(FLOPs, one timed product)``: an n×n by n×n matrix product does 2·n³ FLOPs."""
    if n < 16:
        raise LabkitError(f"n must be >= 16, got {n}")
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3, lambda: seconds(lambda: a @ b, None, clock_kind)


def _best_rate(task: tuple[int, Callable[[], float]], repeats: int, n_threads: int | None):
    amount, run = task
    if repeats < 1:
        raise LabkitError(f"repeats must be >= 1, got {repeats}")
    with threads(n_threads):
        run()  # warm-up: first touch of the buffers, thread start-up
        return amount / min(run() for _ in range(repeats))


def read_bandwidth(
    nbytes: int = 256 * MIB,
    *,
    repeats: int = 5,
    n_threads: int | None = None,
    before: Callable[[], Any] | None = None,
    clock_kind: str = "wall",
) -> float:
    """Measured read bandwidth, bytes/s (:func:`read_task`), best of ``repeats``."""
    return _best_rate(read_task(nbytes, before, clock_kind), repeats, n_threads)


def copy_bandwidth(
    nbytes: int = 256 * MIB,
    *,
    repeats: int = 5,
    n_threads: int | None = None,
    clock_kind: str = "wall",
) -> float:
    """Measured copy bandwidth, bytes read + written per second (:func:`copy_task`), best of N."""
    return _best_rate(copy_task(nbytes, clock_kind), repeats, n_threads)


def matmul_flops(
    n: int = 1024,
    *,
    dtype: torch.dtype = torch.float32,
    repeats: int = 5,
    n_threads: int | None = None,
    clock_kind: str = "wall",
) -> float:
    """Measured matrix-multiply throughput, FLOP/s (:func:`matmul_task`), best of ``repeats``."""
    return _best_rate(matmul_task(n, dtype, clock_kind), repeats, n_threads)


@dataclass(frozen=True)
class DecodeTiming:
    """A measured decode run: ``tokens_per_s`` summed over the batch, ``step_s`` per step."""

    batch: int
    context: int
    use_cache: bool
    step_s: float
    tokens_per_s: float


class DecodeSteps:
    """Greedy decoding one token per call, timed: made for :func:`interleaved`.

    Creating it processes a random ``prompt``-token prompt for ``batch`` sequences (prefill, not
    timed). Each call then generates ONE more token for every sequence and returns its seconds:
    with the KV cache (``use_cache=True``) the step feeds the last token; without it
    (``use_cache=False``) it runs the whole sequence again, recomputing the prefix. Calls continue
    the same sequences, so :attr:`context` grows by one per call. Runs on the model's device
    (CUDA is synchronised before the clock is read; the thread clock is for the CPU only).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        batch: int = 1,
        prompt: int = 16,
        use_cache: bool = True,
        seed: int = 0,
        clock_kind: str = "wall",
    ) -> None:
        from transformers import DynamicCache

        if not isinstance(batch, int) or batch < 1:
            raise LabkitError(f"batch must be a positive integer, got {batch!r}")
        if not isinstance(prompt, int) or prompt < 1:
            raise LabkitError(f"prompt must be >= 1 token, got {prompt!r}")
        self.model, self.batch, self.use_cache = model, batch, use_cache
        device = next(model.parameters()).device
        if clock_kind == "thread" and device.type != "cpu":
            raise LabkitError(
                f"the thread clock does not see work on {device.type}; accepted: clock='wall'"
            )
        clock(clock_kind)  # a bad name or thread count fails here, before the prefill
        self.clock_kind = clock_kind
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, model.config.vocab_size, (batch, prompt), generator=gen).to(device)
        self._sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.cache = DynamicCache(config=model.config) if use_cache else None
        with torch.no_grad():
            out = model(ids, cache=self.cache, use_cache=use_cache)
        self.next = out.logits[:, -1:].argmax(-1)
        self.seq = torch.cat([ids, self.next], 1)

    @property
    def context(self) -> int:
        """Tokens in each sequence before the next step (the prompt plus the tokens made)."""
        return self.seq.shape[1] - 1

    def __call__(self) -> float:
        now = clock(self.clock_kind)
        self._sync()
        t = now()
        with torch.no_grad():
            if self.use_cache:
                out = self.model(self.next, cache=self.cache, use_cache=True)
            else:
                out = self.model(self.seq, use_cache=False)
            self.next = out.logits[:, -1:].argmax(-1)
        self._sync()
        took = now() - t
        self.seq = torch.cat([self.seq, self.next], 1)
        return took


def measure_decode(
    model: torch.nn.Module,
    *,
    batch: int = 1,
    prompt: int = 16,
    new_tokens: int = 4,
    use_cache: bool = True,
    repeats: int = 2,
) -> DecodeTiming:
    """Time greedy decoding of ``new_tokens`` tokens after a random ``prompt``-token prompt.

    The prompt is processed first (prefill, not timed); then each step feeds the last token with
    the KV cache (``use_cache=True``) or the whole sequence again without one (``use_cache=False``
    recomputes the prefix every step): :class:`DecodeSteps`. Best of ``repeats``, each with a new
    prefill, on the wall clock. ``context`` is the mean length seen.
    """
    if new_tokens < 1 or prompt < 1:
        raise LabkitError(f"prompt and new_tokens must be >= 1, got {prompt} and {new_tokens}")
    if repeats < 1:
        raise LabkitError(f"repeats must be >= 1, got {repeats}")
    best = math.inf
    for _ in range(repeats):
        step = DecodeSteps(model, batch=batch, prompt=prompt, use_cache=use_cache)
        best = min(best, sum(step() for _ in range(new_tokens)) / new_tokens)
    return DecodeTiming(batch, prompt + (new_tokens + 1) // 2, use_cache, best, batch / best)
