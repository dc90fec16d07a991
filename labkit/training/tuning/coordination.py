"""A resumable Optuna study that ends holding exactly ``n_trials`` COMPLETE trials, shared by any
number of workers, for any objective (:func:`search`). ``python -m labkit tune`` runs it with the
course's objective (:mod:`labkit.training.tuning.cli`); the tests with a trivial one.

Counting rule: ``n_trials=N`` means N COMPLETE trials. PRUNED trials are extra (they are cheap,
and they inform the sampler and the pruner) and FAIL trials never count.

Several workers may share one study (two terminals running the same ``labkit tune`` command):
each trial records its worker (host and process id) and, through Optuna's heartbeat, stays
marked alive while it runs. A RUNNING trial whose process is gone (same host, process id no
longer alive) is marked FAIL as soon as a worker next looks (when a run starts, or while a
running worker waits for room), without waiting for the grace period; one on another host is
failed by Optuna's stale-trial check once it has missed its heartbeat for :data:`GRACE_PERIOD`
seconds. A live trial is never failed.
Each trial's sampler is seeded from ``(seed, trial number)``, so workers draw different
parameters and a one-worker run is reproducible; TPE runs with ``constant_liar`` so that
concurrent workers avoid each other's running configurations. A trial only runs its objective
while the COMPLETE trials plus the RUNNING trials ahead of it are fewer than N; otherwise it
waits, and if the others complete the study it is PRUNED before running (noted in its user
attributes), so the study ends with exactly N COMPLETE trials.

Optuna's ``MaxTrialsCallback(states=(COMPLETE,))`` with the heartbeat and ``fail_stale_trials``
alone would let two workers overshoot N and leave a killed worker's trial RUNNING for the whole
grace period;
the process-id check and the room count above close both gaps.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from labkit import LabkitError, checks, compat
from labkit.training.tuning.search import Budget, get_budget
from labkit.training.tuning.storage import check_sqlite_storage, check_url, hide_password, shown

NOTE_KEY = "labkit_note"
WORKER_KEY = "labkit_worker"
INTERRUPTED_NOTE = "left RUNNING by an interrupted run; marked FAIL on resume"
SURPLUS_NOTE = "not trained: other workers completed the study meanwhile"
#: Optuna heartbeat: a running trial records that it is alive every HEARTBEAT_INTERVAL seconds;
#: one that missed its heartbeat for GRACE_PERIOD seconds is failed by Optuna's stale-trial check.
HEARTBEAT_INTERVAL = 5
GRACE_PERIOD = 60
#: How often a waiting worker looks at the study again (seconds).
POLL_SECONDS = 0.5
#: A trial PRUNED before its objective ran records why under this user attribute.
PRUNED_REASON_KEY = "pruned_reason"


# --- the request -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """A search request, checked (:func:`check_request`): where the study lives, its name, how many
    COMPLETE trials it must hold, and the options that go with it."""

    storage: str
    study_name: str
    n_trials: int
    timeout: float | None = None
    seed: int = 0
    budget: Budget = field(default_factory=lambda: get_budget("fast"))
    gpu_memory: float | None = None


def _is_positive_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and value > 0


def check_request(
    storage: str,
    study_name: str,
    n_trials: int,
    timeout: float | None,
    budget: str | Budget,
    *,
    seed: int = 0,
    gpu_memory: float | None = None,
) -> Request:
    """Every option of a search checked, without touching the storage (a bad option never leaves
    a half-made study behind): a :class:`Request`, or a one-line :class:`LabkitError`. numpy
    integers count as integers and are stored as plain ones."""
    n_trials = checks.positive("n_trials", n_trials)
    if timeout is not None and not _is_positive_number(timeout):
        raise LabkitError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    if not isinstance(study_name, str) or not study_name.strip():
        raise LabkitError(f"study name is empty; accepted: any non-empty name, got {study_name!r}")
    seed = checks.seed_value("seed", seed)
    if gpu_memory is not None and not _is_positive_number(gpu_memory):
        raise LabkitError(f"GPU memory must be a number of GiB > 0, got {gpu_memory!r}")
    b = get_budget(budget)
    check_url(storage)
    return Request(
        storage,
        study_name,
        n_trials,
        None if timeout is None else float(timeout),
        seed,
        b,
        None if gpu_memory is None else float(gpu_memory),
    )


# --- the storage and the workers ---------------------------------------------------------------
def _is_schema_race(err: Exception) -> bool:
    """Whether opening a storage failed because another process was creating it at that moment."""
    text = str(err).lower()
    return type(err).__name__ in {"IntegrityError", "OperationalError"} and any(
        key in text for key in ("unique constraint", "already exists", "database is locked")
    )


def open_storage(
    url: str,
    attempts: int = 5,
    on_stale: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage for ``url`` with the heartbeat on, or a one-line :class:`LabkitError`.

    Two processes creating the same new database at once race on its schema: the loser retries
    (``attempts`` times, a fraction of a second apart) instead of failing. ``on_stale`` is called
    for each trial Optuna's heartbeat check marks FAIL.
    """
    check_url(url)
    check_sqlite_storage(url)
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=HEARTBEAT_INTERVAL,
                    grace_period=GRACE_PERIOD,
                    heartbeat_stale_trial_callback=on_stale,
                )
        except Exception as err:  # sqlalchemy errors, missing drivers, refused connections
            if _is_schema_race(err) and attempt + 1 < attempts:
                time.sleep(0.2 * (attempt + 1))
                continue
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            first = hide_password(first, url)  # a driver may quote the URL
            raise LabkitError(
                f"cannot open storage {shown(url)!r} ({type(err).__name__}: {first}); accepted: a "
                "reachable database URL, e.g. sqlite:///path/to/study.db in an existing folder"
            ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def worker_id() -> str:
    """``host:pid`` of this process, stored in each trial it runs (:data:`WORKER_KEY`)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _orphan_reason(trial: optuna.trial.FrozenTrial) -> str | None:
    """Why a RUNNING trial certainly has no live process, or None when it may be alive."""
    worker = trial.user_attrs.get(WORKER_KEY)
    if isinstance(worker, str) and worker.count(":") >= 1:
        host, _, pid_text = worker.rpartition(":")
        if host != socket.gethostname() or not pid_text.isdigit():
            return None  # another machine: Optuna's heartbeat decides
        pid = int(pid_text)
        if pid == os.getpid():
            return "this process is not running it"
        return None if _pid_alive(pid) else "its process is gone"
    started = trial.datetime_start
    if started is not None and (time.time() - started.timestamp()) > GRACE_PERIOD:
        return f"no worker recorded, started over {GRACE_PERIOD} s ago"
    return None


def fail_orphans(
    study: optuna.Study, log: Callable[[str], None] | None = None, keep: tuple[int, ...] = ()
) -> list[int]:
    """Mark FAIL the RUNNING trials whose process is certainly gone; returns their numbers.

    A trial counts as orphaned when its recorded worker ran on this host and that process no
    longer exists (or is this process, which is not running it), or when it records no worker
    and started more than :data:`GRACE_PERIOD` seconds ago. Trials of live processes and of
    other hosts are left alone (Optuna's heartbeat check fails those that stop). Trials in
    ``keep`` (this process's running trial) are never touched. Uses ``Study.tell``.
    """
    numbers = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number in keep:
            continue
        why = _orphan_reason(t)
        if why is None:
            continue
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError, ValueError):
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            numbers.append(t.number)
            if log is not None:
                log(f"trial {t.number} was {INTERRUPTED_NOTE} ({why})")
    return numbers


def fail_stale(study: optuna.Study) -> None:
    """Optuna's own stale-trial check (missed heartbeats for :data:`GRACE_PERIOD` seconds)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def count(study: optuna.Study, state: TrialState) -> int:
    """How many trials of ``study`` are in ``state``."""
    return len(study.get_trials(deepcopy=False, states=(state,)))


def trial_sampler(seed: int, number: int) -> optuna.samplers.TPESampler:
    """The TPE sampler for trial ``number`` of a search seeded with ``seed``.

    Its seed mixes both (``numpy.random.SeedSequence``), so every trial, whichever worker runs
    it, draws from its own stream: two workers never repeat each other's draws, and a one-worker
    search is reproducible. ``constant_liar`` makes TPE treat running trials as poor results, so
    concurrent workers spread out (Optuna's advice for distributed TPE).
    """
    trial_seed = int(np.random.SeedSequence([seed, number]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=trial_seed, n_startup_trials=4, constant_liar=True)


def _room(study: optuna.Study, n_trials: int, before: int | None = None) -> int | None:
    """Free slots: ``n_trials`` minus COMPLETE minus RUNNING (only those numbered below
    ``before`` when given); None once the study holds ``n_trials`` COMPLETE trials."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    if complete >= n_trials:
        return None
    running = [
        t for t in trials if t.state == TrialState.RUNNING and (before is None or t.number < before)
    ]
    return n_trials - complete - len(running)


def wait_for_room(
    study: optuna.Study,
    n_trials: int,
    before: int | None = None,
    deadline: float | None = None,
    log: Callable[[str], None] | None = None,
) -> bool:
    """Wait until a trial may train (True) or the study is complete or ``deadline`` passed
    (False). While waiting, trials of stopped processes are failed (:func:`fail_orphans`,
    :func:`fail_stale`) so that a killed worker never blocks the others for long."""
    keep = () if before is None else (before,)
    while True:
        room = _room(study, n_trials, before)
        if room is None:
            return False
        if room > 0:
            return True
        if deadline is not None and time.monotonic() > deadline:
            return False
        fail_orphans(study, log, keep)
        fail_stale(study)
        time.sleep(POLL_SECONDS)


@dataclass
class SearchResult:
    """What :func:`search` did: the study, trials started now, trials marked FAIL."""

    study: optuna.Study
    started: int
    marked_failed: list[int] = field(default_factory=list)
    complete: int = 0
    n_trials: int = 0

    @property
    def finished(self) -> bool:
        return self.complete >= self.n_trials


class _DropInterruptTracebacks(logging.Filter):
    """Drops Optuna's "Trial N failed ... KeyboardInterrupt" warning and its traceback: the
    command prints one line about the interruption instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[0] if record.exc_info else None
        return not (exc is not None and issubclass(exc, KeyboardInterrupt))


_INTERRUPT_FILTER = _DropInterruptTracebacks()


# --- the search --------------------------------------------------------------------------------
def _open_study(rdb: optuna.storages.RDBStorage, request: Request) -> optuna.Study:
    """Create or load the study, check its direction and remember budget and seed in it."""
    study_name = request.study_name
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    wanted = {"budget": request.budget.name, "seed": request.seed}
    try:
        study = optuna.create_study(
            storage=rdb,
            study_name=study_name,
            direction="maximize",
            pruner=pruner,
            load_if_exists=True,
        )
        if len(study.directions) != 1:
            raise LabkitError(
                f"study {study_name!r} has {len(study.directions)} objectives; labkit tune "
                "maximises one (the F1): use a new --study-name"
            )
        if study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise LabkitError(f"study {study_name!r} minimises; use a new --study-name")
        if not study.user_attrs and not study.get_trials(deepcopy=False):  # a new study
            for key, value in wanted.items():
                study.set_user_attr(key, value)
    except optuna.exceptions.StorageInternalError as err:
        raise LabkitError(
            f"cannot write to the storage ({str(err).splitlines()[0][:100]}); accepted: a "
            "database you may write to (is the file or its folder read-only?)"
        ) from None
    stored = {k: study.user_attrs.get(k) for k in wanted}
    if stored != wanted:
        made = (
            "outside labkit tune (no budget or seed recorded)"
            if stored == {"budget": None, "seed": None}
            else f"with budget {stored['budget']!r} and seed {stored['seed']!r}"
        )
        raise LabkitError(
            f"study {study_name!r} was made {made}, this run asks for "
            f"{request.budget.name!r} and {request.seed!r}; "
            "re-run with the same options or use a new --study-name"
        )
    return study


def check_space(study: optuna.Study, space: dict[str, Any]) -> None:
    """Refuse in one line a study whose stored trials searched other parameters or ranges than
    ``space`` (name -> distribution): another script's study, whose best trial this search
    would report as its own or whose ranges it would clash with."""
    for t in study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            if name not in space:
                why = f"parameter {name!r}, which this search does not have"
            elif dist != space[name]:
                why = f"{name!r} over {dist}, this search over {space[name]}"
            else:
                continue
            raise LabkitError(
                f"study {study.study_name!r} holds trials of another search (trial {t.number} "
                f"searched {why}); use a new --study-name"
            )


def _coordinated(
    study: optuna.Study,
    request: Request,
    objective: Callable[[optuna.Trial], float],
    say: Callable[[str], None],
) -> Callable[[optuna.Trial], float]:
    """``objective`` behind the worker rules: record the worker, wait for room (or give the trial
    up when others complete the study), seed the trial's own sampler."""

    def coordinated(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_KEY, worker_id())
        if not wait_for_room(study, request.n_trials, before=trial.number, log=say):
            trial.set_user_attr(NOTE_KEY, SURPLUS_NOTE)
            study.stop()
            raise optuna.TrialPruned(SURPLUS_NOTE)
        study.sampler = trial_sampler(request.seed, trial.number)
        return objective(trial)

    return coordinated


def _trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    """One printed line about a finished trial."""
    seconds = trial.user_attrs.get("seconds", 0.0)
    if trial.state == TrialState.COMPLETE:
        return (
            f"trial {trial.number} COMPLETE  F1 {trial.value:.3f}  {seconds:.1f} s  {trial.params}"
        )
    if trial.user_attrs.get(NOTE_KEY) == SURPLUS_NOTE:
        return f"trial {trial.number} {SURPLUS_NOTE}"
    if PRUNED_REASON_KEY in trial.user_attrs:
        return f"trial {trial.number} PRUNED before training: {trial.user_attrs[PRUNED_REASON_KEY]}"
    step = max(trial.intermediate_values, default=0)
    return f"trial {trial.number} {trial.state.name} after epoch {step}  {seconds:.1f} s"


def _reporter(result: SearchResult, bar, say: Callable[[str], None], deadline: float | None):
    """The ``study.optimize`` callback: count, print, move the bar, and stop when the study is
    complete (waiting while other workers' trials could still complete it)."""
    n_trials = result.n_trials

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        result.started += 1
        if trial.state == TrialState.COMPLETE:
            bar.n = min(n_trials, count(study, TrialState.COMPLETE))
            bar.refresh()
        say(_trial_line(study, trial))
        if count(study, TrialState.COMPLETE):
            bar.set_postfix(best=f"{study.best_value:.3f}", pruned=count(study, TrialState.PRUNED))
        if not wait_for_room(study, n_trials, deadline=deadline, log=say):
            study.stop()

    return report


def report_stale(log: Callable[[str], None]):
    """An ``on_stale`` callback for :func:`open_storage` that says which trial was failed."""
    return lambda _study, t: log(
        f"trial {t.number} missed its heartbeat for {GRACE_PERIOD} s; marked FAIL"
    )


def search(
    request: Request,
    objective: Callable[[optuna.Trial], float],
    log: Callable[[str], None] = print,
    progress: bool = False,
    storage: optuna.storages.RDBStorage | None = None,
    space: dict[str, Any] | None = None,
) -> SearchResult:
    """Run (or resume) ``request``'s study until it holds ``n_trials`` COMPLETE trials.

    ``objective(trial) -> float`` is any Optuna objective (the course's is
    :func:`labkit.training.tuning.cli.course_objective`); it may raise ``optuna.TrialPruned``,
    with a reason in the user attribute :data:`PRUNED_REASON_KEY` when it never ran. Re-running
    the same request after an interruption runs only what is missing; several processes may run
    it on one study at once (see the module docstring). The study remembers its budget and seed;
    resuming with different ones is refused. ``timeout`` (seconds) stops starting new trials, as
    in ``study.optimize``. ``progress``: a progress bar (lines are then written above it).
    ``storage``: the request's storage if the caller opened it already (:func:`open_storage`).
    ``space`` (name -> Optuna distribution): the objective's parameters; a study whose trials
    searched others is refused (:func:`check_space`).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    compat.optuna_trial_failure_logger().addFilter(_INTERRUPT_FILTER)
    if storage is None:
        storage = open_storage(request.storage, on_stale=report_stale(log))
    study = _open_study(storage, request)
    if space is not None:
        check_space(study, space)
    n_trials = request.n_trials
    failed = fail_orphans(study, log)
    deadline = None if request.timeout is None else time.monotonic() + request.timeout
    complete = count(study, TrialState.COMPLETE)
    result = SearchResult(study, 0, failed, complete, n_trials)
    missing = n_trials - complete
    running = count(study, TrialState.RUNNING)
    log(
        f"study {request.study_name!r}: {complete} of {n_trials} complete trials stored"
        + (f", {running} running elsewhere" if running and missing > 0 else "")
        + "; "
        + (
            f"running {missing} more (budget {request.budget.name}, seed {request.seed})"
            if missing > 0
            else "done"
        )
    )
    if missing <= 0 or not wait_for_room(study, n_trials, deadline=deadline, log=log):
        result.complete = count(study, TrialState.COMPLETE)
        return result

    # tqdm.std, not tqdm.auto: called from a notebook, auto would draw a widget that the
    # notebook stores (and a redirected stderr cannot hide); std writes text to stderr
    from tqdm.std import tqdm

    bar = tqdm(
        total=n_trials,
        initial=complete,
        unit="trial",
        desc=request.study_name,
        disable=not progress,
    )
    say = bar.write if progress else log
    cap = 3 * missing + 10  # so a search where nearly everything is pruned cannot loop forever
    try:
        study.optimize(
            _coordinated(study, request, objective, say),
            n_trials=cap,
            timeout=request.timeout,
            callbacks=[_reporter(result, bar, say, deadline)],
        )
    finally:
        bar.close()
    result.complete = count(study, TrialState.COMPLETE)
    if not result.finished:
        why = "the timeout" if request.timeout is not None else f"the cap of {cap} trials per run"
        log(
            f"stopped by {why} with {result.complete} of {n_trials} complete trials; "
            "re-run the same command to continue"
        )
    return result
