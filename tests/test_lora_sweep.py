"""labkit.studies.lora_rank: the recorded multi-seed sweep is current, spreads, update sizes, bad input."""

import json

import pytest

from labkit import LabkitError
from labkit.models import zoo
from labkit.studies import lora_rank
from labkit.tuners import peft_methods


def test_record_is_current():
    """The record notebook 11 reads matches today's grid, seeds and LoRA training arguments;
    if this fails, re-make it: .venv/bin/python benchmarks/lora_rank_alpha.py"""
    record = lora_rank.load_record()
    assert record["config"] == lora_rank.record_config()
    seen = {(p["r"], p["alpha"], p["seed"]) for p in record["points"]}
    want = {(r, a, s) for r, a in lora_rank.GRID for s in lora_rank.SEEDS}
    assert seen == want
    for p in record["points"]:
        assert len(p["correct"]) == 84 and p["steps"] > 0 and p["val_loss"] > 0


def _record(tmp_path, **change):
    config = {**lora_rank.record_config(), **change}
    points = [
        {"r": r, "alpha": a, "seed": s, "steps": 4, "losses": [1.0], "val_loss": 0.5 + s,
         "correct": [True, s == 1, False, True]}
        for r, a in lora_rank.GRID for s in lora_rank.SEEDS
    ]  # fmt: skip
    path = tmp_path / "record.json"
    path.write_text(json.dumps({"config": config, "points": points, "date": "today"}))
    return path


def test_spread_adds_the_notebook_seed_and_cuts_questions(tmp_path):
    record = lora_rank.load_record(_record(tmp_path))
    extra = [
        lora_rank.Point(
            r=1,
            alpha=2,
            seed=0,
            steps=4,
            losses=[1.0],
            val_loss=0.1,
            correct=[False, False, False, False],
        )
    ]
    rows = lora_rank.spread(record, extra=extra, limit=2)
    first = rows[0]
    assert (first["r"], first["alpha"], first["scale"]) == (1, 2, 2.0)
    assert first["seeds"] == [0, 1, 2] and first["questions"] == 2
    assert first["em_min"] == 0.0 and first["em_max"] == 1.0
    assert first["val_min"] == 0.1 and first["val_max"] == 2.5
    assert rows[1]["seeds"] == [1, 2]  # no extra point for r=8, alpha=16


def test_stale_missing_or_broken_record_is_one_line(tmp_path):
    with pytest.raises(LabkitError, match="another grid or other training arguments"):
        lora_rank.load_record(_record(tmp_path, train_args={"learning_rate": 1.0}))
    with pytest.raises(LabkitError, match="no record at .*; make it with"):
        lora_rank.load_record(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(LabkitError, match="not valid JSON"):
        lora_rank.load_record(tmp_path / "bad.json")
    record = lora_rank.load_record(_record(tmp_path))
    with pytest.raises(LabkitError, match="scored fewer"):
        lora_rank.spread(record, limit=10)


def test_update_size_follows_the_scaling_rule():
    tok = zoo.load_tokenizer(lora_rank.MODEL_ID)
    plain = [lora_rank.update_size(tok, r, 16, steps=1) for r in (1, 16)]
    rs = [lora_rank.update_size(tok, r, 16, use_rslora=True, steps=1) for r in (1, 16)]
    assert plain[0] == pytest.approx(rs[0])  # sqrt(1) = 1: the same model
    assert plain[1] < 0.5 * plain[0]  # alpha/r: a bigger rank takes smaller steps
    assert 0.6 < rs[1] / rs[0] < 1.6  # alpha/sqrt(r): about the same size


def test_train_point_short(monkeypatch):
    monkeypatch.setitem(peft_methods.TRAIN_ARGS, "lora", {"max_steps": 2, "learning_rate": 3e-3})
    tok = zoo.load_tokenizer(lora_rank.MODEL_ID)
    p = lora_rank.train_point(tok, 2, 4, seed=1, limit=3)
    assert (p.r, p.alpha, p.seed, p.steps, p.scale) == (2, 4, 1, 2, 2.0)
    assert len(p.correct) == 3 and 0 <= p.exact_match <= 1 and p.val_loss > 0


@pytest.mark.parametrize("r, alpha", [(0, 2), (-1, 2), (2, 0), ("8", 16), (True, 2)])
def test_bad_rank_or_alpha(r, alpha):
    tok = None  # refused before the tokenizer is used
    with pytest.raises(LabkitError, match="must be a number > 0"):
        lora_rank.train_point(tok, r, alpha)
    with pytest.raises(LabkitError, match="must be a number > 0"):
        lora_rank.update_size(tok, r, alpha)
