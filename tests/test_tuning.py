"""labkit.training.tuning: metrics, search space, model_init, resumable seeded search, the CLI.

The search protocol (counts, resume, seeding) is tested with a trivial objective
(``tests/quick_tune.py``: sleep, return a number), so those tests take seconds; one smoke test
trains MiniLM for real (``smoke`` budget: 32 sentences, 1-2 epochs) through the course's objective.
"""

import os
import socket
import subprocess
import sys
import time

import numpy as np
import optuna
import psutil
import pytest
from optuna.trial import TrialState
from quick_tune import quick_objective  # tests/quick_tune.py (pytest puts tests/ on sys.path)
from transformers import EvalPrediction

from labkit import REPO_ROOT, LabkitError
from labkit.course import interrupt
from labkit.training import tuning
from labkit.training.tuning import cli, coordination, footprint, search

CLI = [sys.executable, "-m", "labkit", "tune"]
QUICK_CLI = (sys.executable, str(REPO_ROOT / "tests" / "quick_tune.py"))
ENV = {**os.environ, "LABKIT_THREADS": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _trials(url: str, name: str, state: TrialState | None = None):
    study = optuna.load_study(study_name=name, storage=url)
    return study.get_trials(states=None if state is None else (state,))


def test_compute_metrics_and_objective():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.0]])  # predicts 0, 1, 1, 0
    labels = np.array([0, 1, 0, 1])
    metrics = search.compute_metrics(EvalPrediction(predictions=logits, label_ids=labels))
    assert metrics == {"accuracy": 0.5, "f1": 0.5}  # tp 1, fp 1, fn 1
    assert search.compute_objective({"eval_f1": 0.75, "eval_loss": 0.3}) == 0.75
    with pytest.raises(LabkitError, match="eval_f1"):
        search.compute_objective({"eval_loss": 0.3})


def test_default_params_are_the_library_defaults():
    params = search.default_params()
    assert params.pop("optim") in {"adamw_torch_fused", "adamw_torch"}  # fused: transformers 5
    assert params == {
        "learning_rate": 5e-5,
        "num_train_epochs": 3,
        "seed": 42,
        "per_device_train_batch_size": 8,
        "lora_r": 8,
        "lora_alpha": 8,
    }


def test_model_init_suggests_lora_and_shares_the_seed_with_hp_space():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    trial = study.ask()
    model = search.model_init(trial)  # the Trainer calls model_init before hp_space
    space = search.hp_space(trial, max_epochs=2)
    assert set(trial.params) == {
        "lora_r",
        "lora_alpha",
        "seed",
        "learning_rate",
        "num_train_epochs",
        "per_device_train_batch_size",
        "optim",
    }
    assert space["seed"] == trial.params["seed"] and 1 <= space["num_train_epochs"] <= 2
    assert 1e-5 <= space["learning_rate"] <= 1e-2 and space["optim"] in {"sgd", "adamw_torch"}
    config = model.peft_config["default"]
    assert config.r == trial.params["lora_r"] and config.lora_alpha == trial.params["lora_alpha"]
    assert set(config.target_modules) == {"query", "value"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("classifier" in n for n in trainable), "the new head must be trained"
    assert any("query.lora_A" in n for n in trainable) and any(
        "value.lora_B" in n for n in trainable
    )
    assert not any("key" in n for n in trainable)
    # a fresh base every call: a second model has no adapters stacked on the first
    again = search.model_init(trial)
    assert sum("lora_A" in n for n, _ in again.named_parameters()) == sum(
        "lora_A" in n for n, _ in model.named_parameters()
    )


def test_freeze_import_garbage_takes_the_loaded_stack_out_of_collections():
    import gc

    try:
        frozen = search.freeze_import_garbage()
        assert "transformers.trainer" in sys.modules and "peft" in sys.modules
        # the stack's long-lived objects; a few may be freed since (refcounts), never added
        assert 100_000 < gc.get_freeze_count() <= frozen
        # out of the collector's reach: what a collection would walk now is what came after
        assert len(gc.get_objects()) < frozen // 100
    finally:
        gc.unfreeze()


def test_pruning_savings_counts_steps_of_pruned_trials():
    study = optuna.create_study(direction="maximize")
    for state, done, planned in ((TrialState.COMPLETE, 10, 10), (TrialState.PRUNED, 2, 10)):
        trial = optuna.trial.create_trial(
            state=state,
            value=0.5 if state == TrialState.COMPLETE else None,
            intermediate_values={1: 0.5},
            user_attrs={"train_steps": done, "planned_steps": planned},
            params={},
            distributions={},
        )
        study.add_trial(trial)
    assert search.pruning_savings(study) == {
        "pruned_trials": 1,
        "steps_run": 12,
        "steps_saved": 8,
        "fraction_saved": 8 / 20,
    }


def test_pruning_callback_never_prunes_after_the_last_epoch():
    """A trial that has trained in full is kept: pruning it then saves nothing."""
    from transformers import TrainerControl, TrainerState

    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.COMPLETE,
            value=0.9,
            intermediate_values={1: 0.9, 2: 0.9},
            params={},
            distributions={},
        )
    )
    for global_step, last in ((4, False), (8, True)):  # 4 steps per epoch, 2 epochs planned
        callback = search.pruning_callback(study.ask())
        state = TrainerState(epoch=global_step / 4, global_step=global_step, max_steps=8)
        metrics = {"eval_f1": 0.1}  # below the median of the complete trial
        if last:
            callback.on_evaluate(None, state, TrainerControl(), metrics=metrics)  # not pruned
            assert callback.last_value == 0.1
        else:
            with pytest.raises(optuna.TrialPruned):
                callback.on_evaluate(None, state, TrainerControl(), metrics=metrics)


def test_fail_orphans_fails_only_trials_whose_process_is_gone(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    host = socket.gethostname()
    workers = {
        0: f"{host}:{int(dead.stdout)}",  # a process that has exited: orphan
        1: f"{host}:{os.getppid()}",  # a live process: keep
        2: f"another-host:{int(dead.stdout)}",  # another machine: Optuna's heartbeat decides
        3: None,  # no worker recorded, just started (a worker between ask and its first write)
    }
    for worker in workers.values():
        trial = study.ask()
        if worker is not None:
            trial.set_user_attr(coordination.WORKER_KEY, worker)
    lines = []
    assert coordination.fail_orphans(
        optuna.load_study(study_name="s", storage=url), lines.append
    ) == [0]
    states = [t.state for t in _trials(url, "s")]
    assert states == [TrialState.FAIL] + [TrialState.RUNNING] * 3
    assert len(lines) == 1 and "process" in lines[0] and coordination.INTERRUPTED_NOTE in lines[0]


def test_trial_samplers_differ_by_trial_and_repeat_by_seed():
    def draw(seed, number):
        study = optuna.create_study(sampler=coordination.trial_sampler(seed, number))
        return study.ask().suggest_float("x", 0, 1)

    assert draw(0, 0) == draw(0, 0)
    assert len({draw(0, 0), draw(0, 1), draw(1, 0), draw(1, 1)}) == 4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seed": -1}, "seed must be an integer in 0..2"),
        ({"seed": 2**32}, "seed must be an integer in 0..2"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"n_trials": 2.0}, "n_trials"),
        ({"timeout": "10"}, "timeout"),
        ({"study_name": None}, "study name"),
        ({"budget": "huge"}, "unknown budget"),
        ({"gpu_memory": 0}, "GPU memory"),
        ({"gpu_memory": True}, "GPU memory"),
    ],
)
def test_bad_options_are_refused_before_the_storage_is_touched(tmp_path, kwargs, match):
    db = tmp_path / "never.db"
    args = {"storage": f"sqlite:///{db}", "study_name": "s", "n_trials": 1, "budget": "smoke"}
    with pytest.raises(LabkitError, match=match):
        tuning.run_search(**{**args, **kwargs})
    assert not db.exists()


def test_numpy_integers_are_integers_and_the_storage_is_not_opened(tmp_path):
    db = tmp_path / "n.db"
    request = coordination.check_request(
        f"sqlite:///{db}", "s", np.int64(3), None, "smoke", seed=np.int32(4)
    )
    assert request.budget.name == "smoke" and (request.n_trials, request.seed) == (3, 4)
    assert type(request.n_trials) is int and type(request.seed) is int
    assert not db.exists()


def test_multi_objective_or_foreign_study_is_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    optuna.create_study(study_name="multi", storage=url, directions=["maximize", "minimize"])
    foreign = optuna.create_study(study_name="foreign", storage=url, direction="maximize")
    foreign.set_user_attr("owner", "someone else")
    with pytest.raises(LabkitError, match="2 objectives"):
        tuning.run_search(url, "multi", 1, budget="smoke", log=lambda _: None)
    with pytest.raises(LabkitError, match="made outside labkit tune"):
        tuning.run_search(url, "foreign", 1, budget="smoke", log=lambda _: None)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_trials": 0}, "n_trials"),
        ({"n_trials": -2}, "n_trials"),
        ({"timeout": 0}, "timeout"),
        ({"storage": "sqlite:////nonexistent/dir/x.db"}, "/nonexistent/dir does not exist"),
        ({"storage": "postgresql://labkit@127.0.0.1:1/none"}, "cannot open storage"),
        ({"storage": "study.db"}, "not a database URL"),
        ({"budget": "huge"}, "unknown budget"),
        ({"study_name": " "}, "study name"),
    ],
)
def test_run_search_rejects_bad_input(tmp_path, kwargs, match):
    args = {"storage": f"sqlite:///{tmp_path / 'x.db'}", "study_name": "s", "n_trials": 2}
    with pytest.raises(LabkitError, match=match) as err:
        tuning.run_search(**{**args, "budget": "smoke", **kwargs})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "argv",
    [
        ["--storage", "sqlite:///x.db", "--study-name", "s", "--n-trials", "two"],
        ["--storage", "sqlite:///x.db", "--study-name", "s", "--n-trials", "2", "--frobnicate"],
        ["--study-name", "s", "--n-trials", "2"],
    ],
)
def test_cli_argument_errors_are_labkit_errors(argv):
    with pytest.raises(LabkitError, match="see python -m labkit tune --help"):
        tuning.cli_main(argv)


@pytest.mark.parametrize(
    "extra",
    [
        ["--storage", "sqlite:////nonexistent/dir/x.db", "--n-trials", "2"],
        ["--storage", "sqlite:///x.db", "--n-trials", "0"],
        ["--storage", "sqlite:///x.db", "--n-trials", "2", "--unknown-option"],
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, extra):
    run = subprocess.run(
        [*CLI, "--study-name", "s", *extra],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**ENV, "PYTHONPATH": str(REPO_ROOT)},
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and run.stderr.startswith("labkit tune:")


def _quick_search(url: str, name: str, n: int, seed: int = 0) -> coordination.SearchResult:
    request = coordination.check_request(url, name, n, None, "smoke", seed=seed)
    return coordination.search(request, quick_objective, log=lambda _: None)


def test_same_seed_same_trials_and_rerun_runs_nothing(tmp_path):
    def params(seed: int, name: str) -> list[dict]:
        result = _quick_search(f"sqlite:///{tmp_path / name}.db", "s", 3, seed=seed)
        assert result.finished and coordination.count(result.study, TrialState.COMPLETE) == 3
        return [t.params for t in result.study.trials]

    assert params(7, "a") == params(7, "b") != params(8, "c")
    url = f"sqlite:///{tmp_path / 'b'}.db"
    again = _quick_search(url, "s", 3, seed=7)
    assert again.started == 0 and len(again.study.trials) == 3
    with pytest.raises(LabkitError, match="same options"):
        _quick_search(url, "s", 3, seed=8)
    assert "best trial: #" in cli.summary(again.study)


def test_the_kill_waits_while_the_running_trial_has_just_finished(tmp_path):
    """kill_mid_search freezes the search and reads the study again before it kills: a trial that
    finished after the first read leaves the process running (continued), one still RUNNING with
    a parameter drawn gets it killed (here: still frozen)."""
    url = f"sqlite:///{tmp_path / 'race.db'}"
    study = optuna.create_study(study_name="r", storage=url)
    study.tell(study.ask(), 1.0)  # one COMPLETE trial, none RUNNING: the trial "just finished"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not interrupt._still_mid_trial(proc, url, "r")
        assert psutil.Process(proc.pid).status() != psutil.STATUS_STOPPED  # continued
        running = study.ask()  # now a trial RUNS, but has drawn nothing yet: not worth the kill
        assert not interrupt._still_mid_trial(proc, url, "r")
        running.suggest_float("x", 0.0, 1.0)  # it has stored what it drew: a resume must keep it
        assert interrupt._still_mid_trial(proc, url, "r")
        assert psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED  # frozen, to be killed
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_killed_search_resumes_to_exactly_n_complete_trials(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LABKIT_TEST_TRIAL_SECONDS", "2")  # long enough to be caught RUNNING
    url, n = f"sqlite:///{tmp_path / 'study.db'}", 4
    argv = ["--storage", url, "--study-name", "k", "--n-trials", str(n), "--budget", "smoke"]
    before = interrupt.kill_mid_search(argv, url, "k", timeout=60, command=QUICK_CLI)
    complete_before = {
        t.number: (t.params, t.value) for t in before if t.state == TrialState.COMPLETE
    }
    running = [t.number for t in before if t.state == TrialState.RUNNING]
    assert 1 <= len(complete_before) < n and running

    # the same command again, in this process (saves a second interpreter start-up)
    assert cli.cli_main(argv, objective=quick_objective) == 0
    out = capsys.readouterr().out
    after = _trials(url, "k")
    complete = [t for t in after if t.state == TrialState.COMPLETE]
    assert len(complete) == n
    # nothing completed was lost or changed, nothing was run twice
    for number, (params, value) in complete_before.items():
        assert after[number].state == TrialState.COMPLETE
        assert (after[number].params, after[number].value) == (params, value)
    assert len({tuple(sorted(t.params.items())) for t in complete}) == n
    new_complete = [t for t in complete if t.number not in complete_before]
    assert len(new_complete) == n - len(complete_before)
    for number in running:
        assert after[number].state == TrialState.FAIL
    assert "marked FAIL on resume" in out and "best trial: #" in out


def test_a_trial_runs_only_while_complete_plus_running_ahead_is_below_n(tmp_path):
    """The exactly-N rule: trials ahead (RUNNING, lower number) keep their slot; once N are
    COMPLETE a waiting trial gives up (the search then prunes it as surplus)."""
    url = f"sqlite:///{tmp_path / 'w.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    study.tell(study.ask(), 0.1)  # 1 COMPLETE
    ahead = study.ask()  # another worker's live trial
    ahead.set_user_attr(coordination.WORKER_KEY, f"{socket.gethostname()}:{os.getppid()}")
    mine = study.ask()
    assert coordination.wait_for_room(study, 3, before=mine.number)  # 3 - 1 - 1 = 1 slot
    now = time.monotonic()
    assert not coordination.wait_for_room(study, 2, before=mine.number, deadline=now)  # 0 slots
    assert coordination.wait_for_room(study, 2, before=ahead.number)  # the earlier one goes on
    study.tell(ahead, 0.2)  # 2 COMPLETE: the study is done
    assert not coordination.wait_for_room(study, 2, before=mine.number)
    assert [t.state for t in _trials(url, "s")][1:] == [TrialState.COMPLETE, TrialState.RUNNING]


def test_trial_footprint_dry_run_equals_a_real_forward():
    import torch

    from labkit.memory import measure

    fp = footprint.trial_footprint(4, 8, "adamw_torch", max_length=16)
    model = search.build_model(8, 16, 1).train()
    params = set(measure._storages(measure._param_tensors(model)))
    saved = {}

    def pack(t):
        if measure.storage_key(t) not in params:
            saved[measure.storage_key(t)] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, 1000, (4, 16))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.zeros(4).long())
    states = measure.state_bytes(model)
    assert fp["activations"] == sum(saved.values())
    assert fp["weights"] == states.weights and fp["gradients"] == 4 * states.trainable_parameters
    sgd = footprint.trial_footprint(4, 8, "sgd", max_length=16)
    assert sgd["optimizer"] == 0 < fp["optimizer"]


def test_minilm_smoke_search_trains_and_prunes_what_does_not_fit(tmp_path):
    """The one search that trains for real: the course's objective through run_search."""
    small = max(footprint.trial_footprint(8, r, "adamw_torch")["total"] for r in search.LORA_RANKS)
    large = min(footprint.trial_footprint(16, r, "sgd")["total"] for r in search.LORA_RANKS)
    assert small < large
    gib = (small + large) / 2 / 2**30
    url = f"sqlite:///{tmp_path / 'g.db'}"
    result = tuning.run_search(
        url, "g", 1, seed=2, budget="smoke", gpu_memory=gib, log=lambda _: None
    )  # seed 2: trial 0 draws batch 32, trial 1 batch 8
    trials = result.study.trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(complete) == 1 and complete[0].params["per_device_train_batch_size"] == 8
    assert complete[0].user_attrs["train_steps"] > 0  # it trained
    assert 0 <= complete[0].value <= 1 and complete[0].intermediate_values  # an F1 per epoch
    assert pruned, "seed 2 draws batch 32 first"
    for t in pruned:
        assert t.params["per_device_train_batch_size"] > 8
        assert "--gpu-memory" in t.user_attrs[coordination.PRUNED_REASON_KEY]
        assert "train_steps" not in t.user_attrs  # never trained
    with pytest.raises(LabkitError, match="GPU memory"):
        tuning.run_search(url, "g", 1, budget="smoke", gpu_memory=0)


def test_check_encoder_refuses_a_causal_lm_in_one_line(tmp_path):
    """Notebook 14's MODEL_ID must be an encoder with query/value/pooler: a causal LM (tied,
    bf16, in the hub's layout) is refused before any trial, not deep inside peft."""
    import torch

    from labkit.models import zoo

    assert search.check_encoder("minilm") == "minilm"
    zoo.load_model("tiny-qwen2").to(torch.bfloat16).save_pretrained(tmp_path)
    with pytest.raises(LabkitError, match="qwen2 model without query, value, pooler; accepted"):
        search.check_encoder(str(tmp_path))
    old = search.MODEL_ID
    try:
        search.MODEL_ID = str(tmp_path)
        with pytest.raises(LabkitError, match="BERT-style encoder"):
            search.build_model(4, 8, 1)
    finally:
        search.MODEL_ID = old


def test_build_model_loads_a_bf16_encoder_in_fp32(tmp_path):
    import torch

    from labkit.models import zoo

    zoo.load_model("minilm", task="base").to(torch.bfloat16).save_pretrained(tmp_path)
    zoo.load_tokenizer("minilm").save_pretrained(tmp_path)
    old = search.MODEL_ID
    try:
        search.MODEL_ID = str(tmp_path)
        model = search.build_model(4, 8, 1)
    finally:
        search.MODEL_ID = old
    assert {p.dtype for p in model.parameters()} == {torch.float32}
