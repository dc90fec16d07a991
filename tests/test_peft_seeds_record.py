"""The multi-seed record the PEFT notebooks read is current: made with today's defaults, complete."""

from labkit import seedstudy


def test_record_matches_current_defaults_and_grid():
    record = seedstudy.load()
    assert record["complete"], "benchmarks/peft_seeds.py did not finish; rerun it"
    assert record["defaults"] == seedstudy.current_defaults(), (
        "labkit.peft_methods defaults, the Trainer defaults or the chat data changed since the record "
        "was made: rerun benchmarks/peft_seeds.py --jobs 2"
    )
    assert record["grid"] == seedstudy.grid_as_json(), "seedstudy.GRID changed: rerun the benchmark"


def test_record_has_every_configuration_and_seed():
    record = seedstudy.load()
    n = len(record["base_correct"])
    for study, configs in seedstudy.GRID.items():
        for method, args in configs:
            runs = [r for r in record["runs"] if r["method"] == method and r["args"] == args]
            assert sorted(r["seed"] for r in runs) == record["seeds"], (study, method, args)
            assert all(len(r["correct"]) == n for r in runs)
    assert len(record["seeds"]) >= 3
