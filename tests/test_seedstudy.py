"""labkit.studies.peft_seeds: scores, summaries, spreads and the record's clear errors (synthetic record)."""

import pytest

from labkit import LabkitError
from labkit.studies import peft_seeds

ARGS = dict(peft_seeds.GRID["12"][0][1])


def _record():
    runs = [
        {
            "method": "lora",
            "args": ARGS,
            "seed": s,
            "correct": correct,
            "final_loss": 0.1 * (s + 1),
            "val_loss": 1.0,
            "steps": 44,
        }
        for s, correct in enumerate([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]])
    ]
    return {"runs": runs, "base_correct": [0, 0, 0, 1], "seeds": [0, 1, 2]}


def test_scores_limit_and_base():
    rec = _record()
    assert peft_seeds.scores(rec, "lora", ARGS) == [0.5, 0.25, 0.75]
    assert peft_seeds.scores(rec, "lora", ARGS, limit=2) == [1.0, 0.5, 1.0]
    assert peft_seeds.base_score(rec) == 0.25 and peft_seeds.base_score(rec, limit=3) == 0.0


def test_summary_and_format():
    rows = peft_seeds.summary(_record(), "12")
    assert len(rows) == 1  # full fine-tuning has no runs in this record: skipped
    row = rows[0]
    assert (row["min"], row["max"], row["mean"]) == (0.25, 0.75, 0.5)
    assert row["final_loss"] == pytest.approx(0.2)
    text = peft_seeds.format_summary(rows)
    assert "lora" in text and "0.50" in text
    assert "| 12 | lora |" in peft_seeds.markdown_table(_record())


def test_spread_helpers():
    assert peft_seeds.within(0.5, [0.4, 0.6]) and not peft_seeds.within(0.7, [0.4, 0.6])
    assert peft_seeds.within(0.65, [0.4, 0.6], slack=0.05)
    assert peft_seeds.gap_exceeds_spread([0.9, 0.8], [0.5, 0.7])
    assert not peft_seeds.gap_exceeds_spread([0.9, 0.6], [0.5, 0.7])


def test_clear_errors(tmp_path):
    with pytest.raises(LabkitError, match="no seed record"):
        peft_seeds.load(tmp_path / "missing.json")
    with pytest.raises(LabkitError, match="unknown configuration"):
        peft_seeds.scores(_record(), "prefix", ARGS)
    with pytest.raises(LabkitError, match="unknown study '07'; accepted: 08, 09, 10, 12"):
        peft_seeds.summary(_record(), "07")


def test_grid_is_json_ready_and_defaults_cover_the_trainer():
    grid = peft_seeds.grid_as_json()
    assert set(grid) == set(peft_seeds.studies())
    defaults = peft_seeds.current_defaults()
    assert {"peft.DEFAULTS", "peft.TRAIN_ARGS", "trainer", "chat data sha256"} <= set(defaults)
    assert defaults["trainer"]["per_device_train_batch_size"] == 16
