"""The three studies on top of labkit.studies.study: each record the notebooks read is current
(``load()`` refuses it otherwise), each grid comes from the course defaults, and each study's
summary reads a synthetic record right. LoRA's update size and one short training point too."""

import json
import math
from pathlib import Path

import pytest

from labkit import LabkitError
from labkit.course import exercises
from labkit.models import zoo
from labkit.studies import forgetting, lora_rank, peft_seeds, study
from labkit.training import forgetting as fg
from labkit.tuners import peft_methods

NOTEBOOK_16 = Path(__file__).resolve().parents[1] / "notebooks" / "16_catastrophic_forgetting.ipynb"


# --- the records are current -----------------------------------------------------------------


def test_peft_seeds_record_is_current():
    """If this fails, re-make the record: LABKIT_THREADS=1 .venv/bin/python benchmarks/peft_seeds.py --jobs 2"""
    record = peft_seeds.load()
    assert len(record["baseline"]) == 84
    assert all(len(r["correct"]) == 84 and r["steps"] > 0 for r in record["runs"])
    assert peft_seeds.defaults_below(record, min_gain=0.3) == []
    table = peft_seeds.markdown_table(record)
    assert "| 12 | lora | 0.003 | 4 | 44 | 1.00 | 1.00 | 1.00 | 1.00 |" in table
    assert "| defaults | p-tuning-lstm | 0.03 | 20 | 220 |" in table


def test_lora_rank_record_is_current():
    """If this fails, re-make the record: .venv/bin/python benchmarks/lora_rank_alpha.py --jobs 2"""
    record = lora_rank.load()
    assert all(len(p["correct"]) == 84 and p["val_loss"] > 0 for p in record["runs"])


def test_forgetting_record_is_current_and_matches_notebook_16():
    """If this fails, re-make the record: .venv/bin/python benchmarks/forgetting_seeds.py --jobs 2"""
    record = forgetting.load()
    for r in record["runs"]:
        epochs = [row["epoch"] for row in r["history"]]
        assert epochs == [float(e) for e in range(forgetting.EPOCHS + 1)]
    cells = json.loads(NOTEBOOK_16.read_text())["cells"]
    params = next(c for c in cells if "parameters" in c["metadata"].get("tags", []))
    scope: dict = {}
    exec("".join(params["source"]), scope)
    assert scope["EPOCHS"] == forgetting.EPOCHS
    forgetting.check_live(scope["EPOCHS"], scope["RUNS_LIVE"])  # what the notebook's cell 2 runs
    # 16.1 by hand from the raw runs (seed means per epoch), not through first_epoch_share
    full = [r["history"] for r in record["runs"] if r["run"] == "full"]
    mean = [sum(h[e]["corpus_loss"] for h in full) / len(full) for e in (0, 1, -1)]
    share = (mean[1] - mean[0]) / (mean[2] - mean[0])
    seed0 = [full[0][e]["corpus_loss"] for e in (0, 1, -1)]
    assert forgetting.first_epoch_share(record, "full") == pytest.approx(share, rel=1e-12)
    assert exercises.check("16.1", share)
    for wrong in (1 - share, (seed0[1] - seed0[0]) / (seed0[2] - seed0[0]), mean[1] / mean[2]):
        assert not exercises.check("16.1", wrong), wrong
    # 16.3 by hand: of the runs with chat exact match >= 0.9 on every seed, least mean corpus loss
    runs = {r["run"] for r in record["runs"]}
    kept = [n for n in runs if min(r["chat_em"] for r in record["runs"] if r["run"] == n) >= 0.9]
    last = {
        n: sum(r["history"][-1]["corpus_loss"] for r in record["runs"] if r["run"] == n)
        for n in kept
    }
    least = min(last, key=last.get)
    assert forgetting.least_forgetting(record) == least
    assert exercises.check("16.3", least)
    for wrong in sorted(runs - {least}):
        assert not exercises.check("16.3", wrong), wrong


def test_grids_come_from_the_course_defaults():
    ta = peft_methods.TRAIN_ARGS
    compared = {(m, json.dumps(a, sort_keys=True)) for p in peft_seeds.STUDY.points
                for m, a in [(p["method"], p["args"])]}  # fmt: skip
    assert all((m, json.dumps(a, sort_keys=True)) in compared for m, a in ta.items())
    assert peft_seeds.GRID["defaults"] == [("p-tuning-lstm", ta["p-tuning-lstm"])]
    lstm_09 = dict(peft_seeds.GRID["09"])["p-tuning-lstm"]
    assert lstm_09["num_train_epochs"] == ta["p-tuning-mlp"]["num_train_epochs"] == 15
    assert lstm_09["num_train_epochs"] != ta["p-tuning-lstm"]["num_train_epochs"]
    lora = peft_methods.DEFAULTS["lora"]
    assert (lora["r"], lora["lora_alpha"]) in lora_rank.GRID
    for name, spec in forgetting.RUNS.items():
        if name != "full lr 1e-4":
            assert spec["learning_rate"] == ta[spec["method"]]["learning_rate"], name


# --- peft_seeds on a synthetic record --------------------------------------------------------

LORA = dict(peft_seeds.GRID["12"])["lora"]


def _peft_record(with_full=True):
    runs = [
        {"group": "12", "method": "lora", "args": LORA, "seed": s, "correct": correct,
         "final_loss": 0.1 * (s + 1), "val_loss": 1.0 + s, "steps": 44}
        for s, correct in enumerate([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]])
    ]  # fmt: skip
    if with_full:
        full = dict(peft_seeds.GRID["12"])["full"]
        runs += [{**r, "method": "full", "args": full, "correct": [1, 1, 1, 1]} for r in runs]
    return {"runs": runs, "baseline": [0, 0, 0, 1], "settings": {"seeds": [0, 1, 2]}}


def test_peft_scores_summary_and_tables():
    rec = _peft_record()
    assert peft_seeds.scores(rec, "lora", LORA) == [0.5, 0.25, 0.75]
    assert peft_seeds.scores(rec, "lora", LORA, limit=2) == [1.0, 0.5, 1.0]
    assert peft_seeds.scores(rec, "lora", LORA, questions=[1, 2]) == [0.5, 0.0, 1.0]
    assert peft_seeds.base_score(rec) == 0.25 and peft_seeds.base_score(rec, limit=3) == 0.0
    lora_row, full_row = peft_seeds.summary(rec, "12")
    assert (lora_row["min"], lora_row["max"], lora_row["mean"]) == (0.25, 0.75, 0.5)
    assert lora_row["final_loss"] == pytest.approx(0.2) and full_row["em"] == [1.0, 1.0, 1.0]
    assert lora_row["val_losses"] == [1.0, 2.0, 3.0] and lora_row["val_loss"] == 2.0  # by seed
    assert "lora" in peft_seeds.format_summary([lora_row])


def test_peft_errors_are_one_line():
    with pytest.raises(LabkitError, match="unknown configuration"):
        peft_seeds.scores(_peft_record(), "prefix", LORA)
    with pytest.raises(LabkitError, match="unknown group '07'; accepted: 08, 09, 10, 12, defaults"):
        peft_seeds.summary(_peft_record(), "07")
    with pytest.raises(LabkitError, match='unknown configuration "full '):
        peft_seeds.summary(_peft_record(with_full=False), "12")  # no silent skip
    for bad in ([], [4], [-1], [True]):
        with pytest.raises(LabkitError, match="questions must be a non-empty list"):
            peft_seeds.scores(_peft_record(), "lora", LORA, questions=bad)
    with pytest.raises(LabkitError, match="questions must be .* with limit 2"):
        peft_seeds.scores(_peft_record(), "lora", LORA, limit=2, questions=[0])


def test_peft_runs_with_attach_options_are_their_own_configuration():
    """Notebook 08's rescaled text init has the same method and args as the plain text init:
    its runs must never count as the plain one's, nor the other way round."""
    args = dict(peft_seeds.GRID["08"][0][1])
    plain = [{"group": "08", "method": "prompt-text", "args": args, "seed": s, "correct": [1, 0],
              "final_loss": 1.0, "val_loss": 1.0, "steps": 165} for s in range(3)]  # fmt: skip
    scaled = [{**r, "attach": {"init_rms": 1.0}, "correct": [1, 1]} for r in plain]
    rec = {"runs": plain + scaled, "baseline": [0, 0]}
    assert peft_seeds.scores(rec, "prompt-text", args) == [0.5, 0.5, 0.5]
    assert peft_seeds.scores(rec, "prompt-text", args, attach={"init_rms": 1.0}) == [1.0] * 3
    assert peft_seeds.label("prompt-text", {"init_rms": 1.0}) == "prompt-text (init_rms 1)"
    points = [p for p in peft_seeds.STUDY.points if p["group"] == "08"]
    assert sum("attach" in p for p in points) == 1
    with pytest.raises(LabkitError, match=r'unknown configuration "prompt-text \(init_rms 2\)'):
        peft_seeds.scores(rec, "prompt-text", args, attach={"init_rms": 2.0})


def test_defaults_below_fails_on_a_default_without_runs():
    with pytest.raises(LabkitError, match="no runs of the course default prompt "):
        peft_seeds.defaults_below(_peft_record(), min_gain=0.3)


def test_peft_settings_cover_defaults_trainer_and_data():
    s = peft_seeds.settings()
    assert {
        "peft_methods.DEFAULTS",
        "peft_methods.TRAIN_ARGS",
        "trainer",
        "chat data sha256",
    } == set(s)
    assert s["trainer"]["per_device_train_batch_size"] == 16


# --- lora_rank ---------------------------------------------------------------------------------


def _lora_record():
    runs = [
        {"r": r, "alpha": a, "seed": s, "steps": 4, "losses": [4.0], "val_loss": 0.5 + s,
         "train_loss": 1.0, "correct": [True, s == 1, False, True]}
        for r, a in lora_rank.GRID for s in lora_rank.SEEDS
    ]  # fmt: skip
    runs += [  # the rsLoRA points: val loss 10 higher, so a mix-up with the plain ones shows
        {**run, "r": r, "alpha": a, "rslora": True, "val_loss": run["val_loss"] + 10}
        for r, a in lora_rank.RSLORA_GRID for run in runs[: len(lora_rank.SEEDS)]
    ]  # fmt: skip
    return {"settings": lora_rank.STUDY.current_settings(), "runs": runs}


def test_lora_summary_adds_the_notebook_seed_and_cuts_questions():
    extra = [
        lora_rank.Point(
            r=1,
            alpha=2,
            seed=0,
            steps=4,
            losses=[4.0],
            val_loss=0.1,
            correct=[False] * 4,
            train_loss=1.0,
        )
    ]
    rows = lora_rank.summary(_lora_record(), extra=extra, limit=2)
    first = rows[0]
    assert (first["r"], first["alpha"], first["scale"]) == (1, 2, 2.0)
    assert first["seeds"] == [0, 1, 2] and first["questions"] == 2
    assert first["em_min"] == 0.0 and first["em_max"] == 1.0
    assert first["val_min"] == 0.1 and first["val_max"] == 2.5
    assert rows[1]["seeds"] == [1, 2]  # no extra point for r=8, alpha=16
    assert rows[1]["val_max"] == 2.5  # the plain r=8, alpha=16 runs only, not the rsLoRA ones
    rs8 = next(row for row in rows if row["rslora"] and row["r"] == 8)
    assert rs8["val_min"] == 11.5 and rs8["scale"] == pytest.approx(16 / 8**0.5)
    # the gap divides by the train-split loss after the last step, not the last logged loss (4.0)
    assert first["ratio_min"] == pytest.approx(0.1) and first["ratio_max"] == pytest.approx(2.5)
    # and the gap in nats/token: validation minus train-split loss, per seed
    assert first["gap_min"] == pytest.approx(-0.9) and first["gap_max"] == pytest.approx(1.5)
    with pytest.raises(LabkitError, match="scored fewer"):
        lora_rank.summary(_lora_record(), limit=10)
    with pytest.raises(LabkitError, match="record has no point r=1, alpha=2"):
        lora_rank.summary({**_lora_record(), "runs": []})


def test_update_size_follows_the_scaling_rule():
    tok = zoo.load_tokenizer(lora_rank.MODEL_ID)
    plain = [lora_rank.update_size(tok, r, 16, steps=1) for r in (1, 16)]
    rs = [lora_rank.update_size(tok, r, 16, use_rslora=True, steps=1) for r in (1, 16)]
    assert plain[0] == pytest.approx(rs[0])  # sqrt(1) = 1: the same model
    assert plain[1] < 0.5 * plain[0]  # alpha/r: a bigger rank takes smaller steps
    assert 0.6 < rs[1] / rs[0] < 1.6  # alpha/sqrt(r): about the same size


def test_update_size_measures_the_layers_asked_for():
    tok = zoo.load_tokenizer(lora_rank.MODEL_ID)
    every = lora_rank.update_size(tok, 2, 16, steps=1)
    down = lora_rank.update_size(tok, 2, 16, steps=1, target_modules=["down_proj"])
    last = lora_rank.update_size(
        tok, 2, 16, steps=1, target_modules=["down_proj"], layers_to_transform=[0]
    )
    assert down != every and last != down  # other layers measured, not all-linear every time
    assert all(0 < v < 1 for v in (every, down, last))


def test_update_size_measures_the_model_asked_for():
    tok = zoo.load_tokenizer("tiny-llama")
    zoo_size = lora_rank.update_size(zoo.load_tokenizer(lora_rank.MODEL_ID), 2, 16, steps=1)
    tiny = lora_rank.update_size(tok, 2, 16, steps=1, model_id="tiny-llama")
    assert 0 < tiny < 1 and tiny != pytest.approx(zoo_size)  # another model's layers measured


def test_train_point_short(monkeypatch):
    monkeypatch.setitem(peft_methods.TRAIN_ARGS, "lora", {"max_steps": 2, "learning_rate": 3e-3})
    tok = zoo.load_tokenizer(lora_rank.MODEL_ID)
    p = lora_rank.train_point(tok, 2, 4, seed=1, limit=3)
    assert (p.r, p.alpha, p.seed, p.steps, p.scale) == (2, 4, 1, 2, 2.0)
    tiny = lora_rank.train_point(
        zoo.load_tokenizer("tiny-llama"), 2, 4, limit=3, model_id="tiny-llama"
    )
    assert tiny.steps == 2 and tiny.val_loss != pytest.approx(p.val_loss)  # another model trained
    assert len(p.correct) == 3 and 0 <= p.exact_match <= 1 and p.val_loss > 0 and p.train_loss > 0


@pytest.mark.parametrize(
    "r, alpha",
    [(0, 2), (-1, 2), (2, 0), ("8", 16), (True, 2), (2.5, 16), (8, float("nan")), (8, "16")],
)
def test_bad_rank_or_alpha(r, alpha):
    tok = None  # refused before the tokenizer is used
    expect = r"(LoRA rank r must be a positive integer|lora_alpha must be a finite number > 0)"
    with pytest.raises(LabkitError, match=expect):
        lora_rank.train_point(tok, r, alpha)
    with pytest.raises(LabkitError, match=expect):
        lora_rank.update_size(tok, r, alpha)


# --- forgetting ------------------------------------------------------------------------------


def _forgetting_record():
    def row(seed, loss):
        first = {"epoch": 0.0, "corpus_loss": 0.5, "probe_em": 1.0, "probe_token_acc": 1.0,
                 "chat_loss": 3.0}  # fmt: skip
        history = [first, {**first, "epoch": 2.0, "corpus_loss": loss}]
        return {"run": "full", "seed": seed, "chat_em": 1.0, "history": history, "best": None}

    points = [{"run": name} for name in forgetting.RUNS]
    return {"settings": {"points": points}, "runs": [row(0, 1.0), row(1, 2.0), row(2, 1.2)]}


def test_forgetting_summary_and_bands():
    record = _forgetting_record()
    s = forgetting.summary(record)["full"]
    assert list(forgetting.summary(record)) == ["full"]  # runs without seeds are left out
    assert s["seeds"] == 3 and s["before"] == 0.5
    assert s["corpus_loss"] == pytest.approx((1.4, 0.5))
    assert forgetting.summary(record, row="best") == {}
    with pytest.raises(LabkitError, match="unknown row"):
        forgetting.summary(record, row="first")
    band = forgetting.epoch_bands(record, "full", "corpus_loss")
    assert band["epoch"] == [0.0, 2.0] and band["min"] == [0.5, 1.0] and band["max"] == [0.5, 2.0]
    assert band["mean"] == pytest.approx([0.5, 1.4])
    assert forgetting.first_epoch_share(record, "full") == pytest.approx(1.0)
    assert forgetting.least_forgetting(record) == "full"
    with pytest.raises(LabkitError, match="no recorded run reaches chat exact match"):
        forgetting.least_forgetting(record, min_chat_em=1.5)
    with pytest.raises(LabkitError, match="unknown run"):
        forgetting.epoch_bands(record, "lora")
    with pytest.raises(LabkitError, match="unknown metric"):
        forgetting.epoch_bands(record, "full", "accuracy")


def test_check_live_refuses_what_notebook_16_cannot_honour():
    forgetting.check_live(forgetting.EPOCHS, [*forgetting.LIVE, "lora r=1"])  # adding is fine
    assert set(forgetting.LIVE) <= set(forgetting.RUNS)
    with pytest.raises(LabkitError, match="EPOCHS = 3 refused") as err:
        forgetting.check_live(3, forgetting.LIVE)
    assert "\n" not in str(err.value)
    with pytest.raises(LabkitError, match="unknown run 'lora r=2'"):
        forgetting.check_live(forgetting.EPOCHS, [*forgetting.LIVE, "lora r=2"])
    with pytest.raises(LabkitError, match="RUNS_LIVE lacks 'prompt'") as err:
        forgetting.check_live(forgetting.EPOCHS, [n for n in forgetting.LIVE if n != "prompt"])
    assert "\n" not in str(err.value)


def test_at_task_loss_interpolates_in_log_chat_loss_between_measured_epochs():
    def row(epoch, chat, corpus):
        return {"epoch": float(epoch), "chat_loss": chat, "corpus_loss": corpus}

    history = [row(0, 3.0, 0.5), row(1, 0.4, 1.0), row(2, 0.1, 2.0), row(3, 0.2, 2.5)]
    early = [row(0, 3.0, 0.5), row(1, 0.01, 1.5), row(2, 0.005, 1.6)]  # below 0.2 within epoch 1
    record = {
        "settings": {"points": [{"run": "full"}]},
        "runs": [{"run": "full", "seed": 0, "history": history},
                 {"run": "full", "seed": 1, "history": early}],
    }  # fmt: skip
    at = forgetting.at_task_loss(record, "full", 0.2)
    assert at[0] == pytest.approx(1.5)  # 0.2 is halfway from 0.4 to 0.1 in log: ln 2 / ln 4
    assert at[1] is None  # reached inside epoch 1, where nothing was measured
    across = forgetting.at_task_loss(record, "full", 0.2, first_epoch=0)  # from the untrained model
    assert across[0] == pytest.approx(1.5)  # the same first crossing
    assert across[1] == pytest.approx(0.5 + math.log(15) / math.log(300))  # 3.0 -> 0.01 in log
    with pytest.raises(LabkitError, match="first_epoch must be an integer >= 0"):
        forgetting.at_task_loss(record, "full", 0.2, first_epoch=-1)
    assert forgetting.at_task_loss(record, "full", 0.05) == [None, None]  # never reached
    with pytest.raises(LabkitError, match="chat_loss must be a number > 0"):
        forgetting.at_task_loss(record, "full", 0)
    with pytest.raises(LabkitError, match="unknown run"):
        forgetting.at_task_loss(record, "lora", 0.2)
    with pytest.raises(LabkitError, match="unknown metric"):
        forgetting.at_task_loss(record, "full", 0.2, key="probe_em")


def test_forgetting_unknown_run_is_one_line():
    tok = zoo.load_tokenizer("tiny-llama")
    probe = fg.Probe(tok, fg.probe_items(counts=1)[:2], fg.corpus_texts(2), chat_limit=0)
    with pytest.raises(LabkitError, match="unknown run 'fulll'"):
        forgetting.run("fulll", tok, probe)


def test_every_study_is_one_study():
    studies = (peft_seeds.STUDY, lora_rank.STUDY, forgetting.STUDY)
    assert all(isinstance(s, study.Study) for s in studies)
    assert [s.record.name for s in studies] == [
        "peft_seeds.json", "lora_rank_alpha.json", "forgetting_seeds.json"
    ]  # fmt: skip
    assert all(
        (Path(__file__).parents[1] / "benchmarks" / f"{s.name}.py").is_file() for s in studies
    )


def test_lora_verdict_needs_three_seeds_and_a_gap_beyond_the_widths():
    row = {"r": 1, "alpha": 2, "seeds": [0, 1, 2], "val_min": 0.12, "val_max": 0.19}
    low = {
        "r": 8,
        "alpha": 16,
        "rslora": True,
        "seeds": [0, 1, 2],
        "val_min": 0.01,
        "val_max": 0.02,
    }
    assert lora_rank.verdict(row, low).startswith("r=8, alpha=16, rsLoRA: lower validation loss")
    assert lora_rank.verdict(low, row) == lora_rank.verdict(row, low)
    close = {**low, "val_min": 0.05, "val_max": 0.10}  # gap 0.02 < widths 0.07 + 0.05
    assert "no conclusion" in lora_rank.verdict(row, close)
    assert lora_rank.verdict(row, {**low, "seeds": [0]}) == "only 1 seed(s): no conclusion"
    named = {"name": "full", "seeds": [0, 1, 2], "val_min": 0.01, "val_max": 0.02}  # any study's
    assert lora_rank.verdict(row, named).startswith("full: lower validation loss")
    assert lora_rank.verdict(row, low).endswith("(gap 0.100 > widths 0.080)")
    assert lora_rank.verdict(row, low, digits=4).endswith("(gap 0.1000 > widths 0.0800)")
    with pytest.raises(LabkitError, match="digits"):
        lora_rank.verdict(row, low, digits=0)
