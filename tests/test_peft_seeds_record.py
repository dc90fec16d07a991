"""The multi-seed record the PEFT notebooks read is current: made with today's defaults, complete."""

from labkit.studies import peft_seeds


def test_record_matches_current_defaults_and_grid():
    record = peft_seeds.load()
    assert record["complete"], "benchmarks/peft_seeds.py did not finish; rerun it"
    assert record["defaults"] == peft_seeds.current_defaults(), (
        "labkit.tuners.peft_methods defaults, the Trainer defaults or the chat data changed since the record "
        "was made: rerun benchmarks/peft_seeds.py --jobs 2"
    )
    assert record["grid"] == peft_seeds.grid_as_json(), (
        "peft_seeds.GRID changed: rerun the benchmark"
    )


def test_record_has_every_configuration_and_seed():
    record = peft_seeds.load()
    n = len(record["base_correct"])
    for study, configs in peft_seeds.GRID.items():
        for method, args in configs:
            runs = [r for r in record["runs"] if r["method"] == method and r["args"] == args]
            assert sorted(r["seed"] for r in runs) == record["seeds"], (study, method, args)
            assert all(len(r["correct"]) == n for r in runs)
    assert len(record["seeds"]) >= 3
