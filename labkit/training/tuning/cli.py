"""The course's search, as a function (:func:`run_search`) and as a command (``python -m labkit
tune``): the MiniLM objective of :mod:`~labkit.training.tuning.search`, the memory check of
:mod:`~labkit.training.tuning.footprint`, run by the study of
:mod:`~labkit.training.tuning.coordination`.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from labkit import LabkitError
from labkit.cli import Parser
from labkit.training.tuning.coordination import (
    PRUNED_REASON_KEY,
    Request,
    SearchResult,
    check_request,
    count,
    open_storage,
    report_stale,
    search,
)
from labkit.training.tuning.footprint import check_any_trial_fits, check_fits
from labkit.training.tuning.search import (
    BUDGETS,
    Budget,
    freeze_import_garbage,
    load_data,
    objective,
    pruning_savings,
    search_space,
)


def course_objective(request: Request) -> Callable[[optuna.Trial], float]:
    """The objective ``labkit tune`` optimises: one MiniLM + LoRA trial on the request's budget
    (:func:`labkit.training.tuning.search.objective`, the data tokenised once per process).

    With ``request.gpu_memory`` (GiB), a trial whose :func:`~labkit.training.tuning.footprint.
    trial_footprint` exceeds it is PRUNED before training, with the reason in its user attribute
    :data:`~labkit.training.tuning.coordination.PRUNED_REASON_KEY` (not trained, not counted).
    """
    budget, gpu_memory = request.budget, request.gpu_memory

    def run(trial: optuna.Trial) -> float:
        if gpu_memory is not None:
            reason = check_fits(trial, budget, gpu_memory)
            if reason is not None:
                trial.set_user_attr(PRUNED_REASON_KEY, reason)
                raise optuna.TrialPruned(reason)
        return objective(trial, load_data(budget))

    return run


def run_search(
    storage: str,
    study_name: str,
    n_trials: int,
    timeout: float | None = None,
    seed: int = 0,
    budget: str | Budget = "fast",
    log: Callable[[str], None] = print,
    gpu_memory: float | None = None,
) -> SearchResult:
    """Run (or resume) the course's search until the study holds ``n_trials`` COMPLETE trials.

    Every option is checked before the storage is opened (:func:`~labkit.training.tuning.
    coordination.check_request`); the rules of resuming and of several workers are those of
    :func:`~labkit.training.tuning.coordination.search`; ``gpu_memory``: see
    :func:`course_objective`.
    """
    request = check_request(
        storage, study_name, n_trials, timeout, budget, seed=seed, gpu_memory=gpu_memory
    )
    if gpu_memory is not None:
        check_any_trial_fits(request.budget, request.gpu_memory)
    space = search_space(request.budget.max_epochs)
    return search(request, course_objective(request), log=log, space=space)


def summary(study: optuna.Study, n_train: int | None = None) -> str:
    """The best trial and what pruning saved, as a few printable lines."""
    if not count(study, TrialState.COMPLETE):
        return "no complete trial yet"
    best = study.best_trial
    s = pruning_savings(study, n_train)
    return "\n".join(
        [
            f"best trial: #{best.number}  validation F1 {best.value:.4f}",
            f"best params: {best.params}",
            f"trials: {count(study, TrialState.COMPLETE)} complete, {s['pruned_trials']} pruned, "
            f"{count(study, TrialState.FAIL)} failed",
            f"pruning saved {s['steps_saved']} of {s['steps_run'] + s['steps_saved']} training "
            f"steps ({100 * s['fraction_saved']:.0f}%)",
        ]
    )


def _stored_complete(storage: str, study_name: str) -> int | None:
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except Exception:  # no study yet, or the storage is busy
        return None
    return count(study, TrialState.COMPLETE)


def _parser() -> Parser:
    parser = Parser(
        prog="python -m labkit tune",
        description="Resumable Optuna search for LoRA on MiniLM (sentiment). Killed and re-run "
        "with the same command, it continues until the study holds N complete trials; several "
        "processes may run the same command on one study at once.",
    )
    parser.add_argument("--storage", required=True, help="database URL, e.g. sqlite:///study.db")
    parser.add_argument("--study-name", required=True)
    parser.add_argument("--n-trials", type=int, required=True, help="complete trials wanted")
    parser.add_argument("--timeout", type=float, help="seconds after which no new trial starts")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed, 0..2**32-1 (default 0)")
    parser.add_argument("--budget", default="fast", choices=list(BUDGETS), help="default fast")
    parser.add_argument(
        "--gpu-memory",
        type=float,
        metavar="GIB",
        help="prune, before training, trials whose estimated memory exceeds GIB",
    )
    return parser


def cli_main(argv: list[str], objective: Callable[[optuna.Trial], float] | None = None) -> int:
    """``python -m labkit tune --storage URL --study-name NAME --n-trials N [--timeout S]``.

    Every option is checked, and the storage opened, before anything heavy is imported. Ctrl-C stops with one line saying
    what the study keeps and how to go on (exit status 130). ``objective`` replaces the course's
    (:func:`course_objective`): the tests run the same command around a trivial one.
    """
    args = _parser().parse_args(argv)
    request = check_request(
        args.storage,
        args.study_name,
        args.n_trials,
        args.timeout,
        args.budget,
        seed=args.seed,
        gpu_memory=args.gpu_memory,
    )
    storage = open_storage(request.storage, on_stale=report_stale(print))  # before heavy imports
    space = None
    try:
        if objective is None:  # the training stack: quiet logs (one bar, for the search), threads
            from labkit import hardware

            hardware.setup()
            if request.gpu_memory is not None:
                check_any_trial_fits(request.budget, request.gpu_memory)
            freeze_import_garbage()  # saves ~0.5 s per trial (see its docstring)
            objective = course_objective(request)
            space = search_space(request.budget.max_epochs)
        result = search(request, objective, progress=True, storage=storage, space=space)
    except KeyboardInterrupt:
        with _sigint_ignored():  # a second Ctrl-C (a double press) must not cut this line short
            print(f"labkit tune: interrupted; {_kept(request)}", file=sys.stderr)
        return 130
    except Exception as err:
        cause = None if isinstance(err, LabkitError) else storage_failure(err)
        if cause is None:
            raise
        raise LabkitError(
            f"the storage failed during the search ({cause}); {_kept(request)} once the disk "
            "has room and the database and its folder are writable"
        ) from None
    print(summary(result.study))
    return 0


@contextlib.contextmanager
def _sigint_ignored():
    """Ctrl-C ignored inside the block (main thread only), the previous handler restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _kept(request: Request) -> str:
    """What the study keeps after a stopped run, and how to go on."""
    done = _stored_complete(request.storage, request.study_name)
    kept = "nothing yet" if done is None else f"{done} of {request.n_trials} complete trials"
    return (
        f"study {request.study_name!r} keeps {kept} (a trial cut short is marked FAIL and does "
        "not count); run the same command again to continue"
    )


def storage_failure(err: BaseException) -> str | None:
    """``Type: first line`` of the database or disk error behind ``err`` (Optuna may wrap it, or
    end in its own ``AssertionError``), or None when ``err`` is not one."""
    import sqlite3

    from sqlalchemy.exc import SQLAlchemyError

    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(
            err, (optuna.exceptions.StorageInternalError, SQLAlchemyError, sqlite3.Error)
        ):
            first = (str(err).strip().splitlines() or [""])[0][:120]
            return f"{type(err).__name__}: {first}"
        err = err.__cause__ or err.__context__
    return None
