"""One multi-seed study: a grid of points × seeds -> runs, made in parallel and resumably, kept as
one JSON record, refused at load when stale, summarised as min / mean / max over the seeds.

A training run on a CPU takes from 10 s to minutes, so a notebook trains one seed live and reads
the others from a record in ``benchmarks/``. A :class:`Study` says what to run:

- ``points``: the grid, each point a JSON-ready dict (``{"r": 8, "alpha": 16}``);
- ``seeds``: the seeds every point is trained with;
- ``run(point, seed) -> dict``: one run (a module-level function: it runs in a worker process);
- ``settings()``: everything else the runs depend on (training arguments, data hashes);
- ``baseline()`` (optional): what is measured once, not per seed (the untuned model).

:meth:`Study.make` runs every (point, seed) in worker processes with one torch thread each and
rewrites the record after every finished run; ``resume=True`` keeps the runs of a record made
with today's settings and runs only the missing ones. :meth:`Study.load` refuses a record that is
missing, broken, incomplete or made with other settings than today's, so a notebook never reads a
stale record. :func:`spread` is the one min / mean / max over seeds.

The record, one schema for every study::

    {"study": "peft_seeds", "settings": {"points": [...], "seeds": [...], ...},
     "complete": true, "date": "...", "environment": "...", "threads_per_run": 1,
     "wall_seconds": 1968, "baseline": ..., "runs": [{**point, "seed": 0, **result}, ...],
     "resumed": [{"date": "...", "environment": "...", "threads_per_run": 1}]}

``date`` and ``environment`` are the first session's; ``resumed`` (when present) lists the later
ones, and ``wall_seconds`` adds them up.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit import REPO_ROOT, LabkitError, checks, cli, files

Point = dict[str, Any]


def _json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(value))


def _rel(path: Path) -> str:
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def _in_worker(run: Callable[..., Any], *args: Any) -> Any:
    """Call ``run`` in a worker process on one torch thread (seed 0, quiet logs)."""
    from labkit import hardware

    hardware.setup(threads=1)
    return run(*args)


def is_run_of(run: dict[str, Any], point: Point) -> bool:
    """Whether the recorded ``run`` belongs to ``point`` (every field of the point equal)."""
    return all(k in run and run[k] == v for k, v in point.items())


def _exactly(run: dict[str, Any], point: Point, points: Sequence[Point]) -> bool:
    """Whether ``run`` belongs to ``point`` and to no point with more fields (a run of
    ``{"r": 8, "rslora": True}`` is also a run of ``{"r": 8}`` by :func:`is_run_of`)."""
    return not any(
        len(other) > len(point) and is_run_of(run, other) for other in points if other != point
    )


def runs_of(record: dict[str, Any], point: Point) -> list[dict[str, Any]]:
    """The recorded runs of ``point``, by seed."""
    return sorted((r for r in record["runs"] if is_run_of(r, point)), key=lambda r: r["seed"])


@dataclass(frozen=True)
class Spread:
    """A value over seeds: the values, their minimum, mean and maximum."""

    values: tuple[float, ...]
    min: float
    mean: float
    max: float

    @property
    def half_range(self) -> float:
        """Half of max - min: the error bar the course draws for a few seeds."""
        return (self.max - self.min) / 2


def spread(values: Sequence[float]) -> Spread:
    """Min, mean and max of ``values`` (one per seed); a clear error when there are none."""
    values = tuple(values)
    if not values:
        raise LabkitError("no values to summarise; the record has no runs of this point")
    return Spread(values, min(values), sum(values) / len(values), max(values))


def within(value: float, seeds: Sequence[float], slack: float = 0.0) -> bool:
    """Whether ``value`` lies in [min(seeds) - slack, max(seeds) + slack]."""
    s = spread(_numbers("seeds", seeds))
    value = checks.number("value", value)  # NaN would be "not within" for a broken run silently
    return s.min - checks.number("slack", slack, low=0) <= value <= s.max + slack


def ranges_apart(a: Sequence[float], b: Sequence[float]) -> bool:
    """True when the two seed ranges [min, max] do not overlap: every seed of one is above every
    seed of the other. The weaker claim: it does not ask the gap to exceed the seed spread (a
    strict rule such as ``lora_rank.verdict`` does)."""
    sa, sb = spread(_numbers("a", a)), spread(_numbers("b", b))
    return sa.min > sb.max or sb.min > sa.max


def question_limit(limit: Any) -> int | None:
    """``limit`` (the first held-out questions to count) checked: None (all) or an integer >= 1;
    ``[:-1]`` would silently drop the last question and ``[:0]`` count none."""
    return None if limit is None else checks.positive("limit (questions, or None for all)", limit)


def _numbers(name: str, values: Sequence[float]) -> list[float]:
    """``values`` (one per seed) as finite floats, or one line naming the bad one."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise LabkitError(f"{name} must be a list of numbers (one per seed), got {values!r}")
    return [checks.number(f"{name}[{i}]", v) for i, v in enumerate(values)]


@dataclass(frozen=True)
class Study:
    """A grid of ``points`` × ``seeds``, the function that runs one, and what the runs depend on."""

    name: str
    points: tuple[Point, ...]
    seeds: tuple[int, ...]
    run: Callable[[Point, int], dict[str, Any]]
    settings: Callable[[], dict[str, Any]]
    baseline: Callable[[], Any] | None = None

    def __post_init__(self) -> None:
        # as the record holds them (lists, not tuples), so that runs compare equal to points
        object.__setattr__(self, "points", tuple(_json(list(self.points))))
        object.__setattr__(self, "seeds", tuple(self.seeds))

    @property
    def record(self) -> Path:
        """Where the record lives: ``benchmarks/<name>.json``."""
        return REPO_ROOT / "benchmarks" / f"{self.name}.json"

    @property
    def rerun(self) -> str:
        """The command that (re-)makes the record."""
        return f"LABKIT_THREADS=1 .venv/bin/python benchmarks/{self.name}.py --jobs 2"

    def current_settings(self) -> dict[str, Any]:
        """What a current record was made with: the points, the seeds and :attr:`settings`."""
        return _json({"points": self.points, "seeds": self.seeds, **self.settings()})

    def missing(self, record: dict[str, Any]) -> list[tuple[Point, int]]:
        """The (point, seed) pairs of the grid that ``record`` has no run of."""
        return [
            (p, s)
            for p in self.points
            for s in self.seeds
            if not any(r["seed"] == s for r in runs_of(record, p))
        ]

    def _read(self, path: Path) -> dict[str, Any]:
        if not path.is_file():
            raise LabkitError(f"no record at {_rel(path)}; make it with {self.rerun}")
        record = files.read_json(path, f"re-make it with {self.rerun} --replace", name=_rel(path))
        if not isinstance(record, dict) or record.get("study") != self.name:
            found = record.get("study") if isinstance(record, dict) else None
            raise LabkitError(
                f"{_rel(path)} is not a record of the study {self.name!r} (it says {found!r}); "
                f"re-make it with {self.rerun} --replace"
            )
        return record

    def _changed(self, record: dict[str, Any]) -> list[str]:
        today = self.current_settings()
        made = record.get("settings", {})
        return sorted(k for k in today.keys() | made.keys() if today.get(k) != made.get(k))

    def _check_settings(
        self, record: dict[str, Any], path: Path, fix: str, grid_may_change: bool = False
    ) -> None:
        changed = self._changed(record)
        if grid_may_change:
            changed = [k for k in changed if k != "points"]
        if changed:
            raise LabkitError(
                f"{_rel(path)} was made with other settings than today's "
                f"(changed: {', '.join(changed)}); {fix}"
            )

    def load(self, path: str | Path | None = None) -> dict[str, Any]:
        """The record, or a one-line error if it is missing, broken, stale or incomplete."""
        path = Path(path) if path is not None else self.record
        record = self._read(path)
        only_grid = self._changed(record) == ["points"]
        fix = "run the new points with --resume" if only_grid else "re-make it with --replace"
        self._check_settings(record, path, f"{fix}: {self.rerun} {fix.split()[-1]}")
        missing = self.missing(record)
        if missing or not record.get("complete"):
            raise LabkitError(
                f"{_rel(path)} is incomplete ({len(missing)} of "
                f"{len(self.points) * len(self.seeds)} runs missing); finish it with "
                f"{self.rerun} --resume"
            )
        return record

    def _start(self, out: Path, resume: bool) -> dict[str, Any]:
        """A new record, or (``resume``) the record at ``out`` with only the runs of today's grid;
        a resumed record keeps its first date and environment and lists each later session."""
        from labkit import hardware

        session = {"date": time.strftime("%Y-%m-%d"), "environment": hardware.env_report()}
        if not (resume and out.is_file()):
            return {
                "study": self.name,
                "settings": self.current_settings(),
                "complete": False,
                **session,
                "threads_per_run": 1,
                "wall_seconds": 0,
                "runs": [],
            }
        old = self._read(out)
        # a grid that gained (or lost) points keeps the runs of the points it still has: each
        # run is identified by its point, and everything else it depends on is unchanged
        self._check_settings(old, out, "make it afresh with --replace", grid_may_change=True)
        runs = [r for p in self.points for r in runs_of(old, p) if _exactly(r, p, self.points)]
        resumed = [*old.get("resumed", []), {**session, "threads_per_run": 1}]
        settings = self.current_settings()
        return {**old, "settings": settings, "complete": False, "resumed": resumed, "runs": runs}

    def _index(self, run: dict[str, Any]) -> int:
        return next(
            i
            for i, p in enumerate(self.points)
            if is_run_of(run, p) and _exactly(run, p, self.points)
        )

    def _add(self, record: dict[str, Any], point: Point, seed: int, result: dict) -> None:
        clash = sorted(set(result) & (set(point) | {"seed"}))
        if clash:
            raise LabkitError(f"the run of {point} returned fields of its point: {clash}")
        record["runs"].append({**point, "seed": seed, **result})
        record["runs"].sort(key=lambda r: (self._index(r), r["seed"]))

    def make(
        self,
        out: str | Path | None = None,
        *,
        jobs: int = 1,
        resume: bool = False,
        replace: bool = False,
    ) -> dict[str, Any]:
        """Run every missing (point, seed) in ``jobs`` worker processes; returns the record.

        The record is rewritten after every finished run (``"complete": false`` until the last),
        so a crash loses only the runs in progress. An existing ``out`` is never replaced
        silently: ``resume=True`` keeps its runs (refused when it was made with other settings)
        and runs only the missing ones; ``replace=True`` starts afresh.
        """
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise LabkitError(f"jobs is a number of worker processes (>= 1), got {jobs!r}")
        out = Path(out) if out is not None else self.record
        if resume and replace:
            raise LabkitError("resume and replace do not go together; use one of them")
        if out.exists() and not (resume or replace):
            raise LabkitError(
                f"{_rel(out)} exists; accepted: --resume (keep its runs, run the missing ones) "
                "or --replace (make it afresh)"
            )
        record = self._start(out, resume)
        todo = self.missing(record)
        start = time.perf_counter()
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            if self.baseline is not None and "baseline" not in record:
                record["baseline"] = pool.submit(_in_worker, self.baseline).result()
            futures = {pool.submit(_in_worker, self.run, p, s): (p, s) for p, s in todo}
            for done, fut in enumerate(as_completed(futures), 1):
                point, seed = futures[fut]
                try:
                    result = fut.result()
                except Exception as err:
                    pool.shutdown(cancel_futures=True)
                    raise LabkitError(
                        f"the run of {point} seed {seed} failed ({type(err).__name__}: {err}); "
                        f"the finished runs are in {_rel(out)}: continue with --resume"
                    ) from err
                self._add(record, point, seed, result)
                _write(out, record)
                print(
                    f"[{done}/{len(todo)} {time.perf_counter() - start:.0f} s] {point} seed {seed}",
                    file=sys.stderr,
                    flush=True,
                )
        record["complete"] = True
        record["wall_seconds"] = (record.get("wall_seconds") or 0) + round(
            time.perf_counter() - start
        )
        _write(out, record)
        return record

    def parser(self, description: str) -> cli.Parser:
        """The benchmark script's command line: ``--jobs``, ``--resume``, ``--out``."""
        parser = cli.Parser(description=description)
        parser.add_argument("--jobs", type=int, default=1, help="worker processes, 1 thread each")
        parser.add_argument(
            "--resume", action="store_true", help="keep the runs OUT holds; run the missing ones"
        )
        parser.add_argument("--replace", action="store_true", help="make OUT afresh")
        parser.add_argument("--out", default=str(self.record), help="the record to write")
        return parser


def _write(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` whole or not at all (a crash mid-write leaves the previous file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)


def script(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a benchmark script's ``main``: a :class:`LabkitError` becomes one line, exit 2."""
    try:
        return main(argv)
    except LabkitError as err:
        print(f"{Path(sys.argv[0]).name}: {err}", file=sys.stderr)
        return 2
