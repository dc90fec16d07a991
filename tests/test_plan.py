"""The planner (labkit.fit.plan, ``estimate --fit GIB --levers``): the plan fits, no cheaper set
of levers fits, nothing-fits is one line, and the CLI's JSON carries the plan and its peak."""

import itertools
import json

import pytest

from labkit import LabkitError
from labkit.fit import estimate_cli, plan
from labkit.memory import estimator, peak

GIB = 2**30
LORA_8B = {"method": "lora", "precision": "bf16-mixed", "batch": 1, "seq": 2048}


def test_the_plan_fits_and_its_peak_is_the_estimators():
    p = plan.plan("llama-3.1-8b", 24, **LORA_8B)
    assert p.baseline > 24 * GIB >= p.peak
    assert p.levers
    again = peak.training_peak("llama-3.1-8b", **{**LORA_8B, **p.options}).peak
    assert again == p.peak


@pytest.mark.parametrize(
    ("config", "gib", "job"),
    [
        ("llama-3.1-8b", 24, LORA_8B),
        (
            "qwen2.5-0.5b",
            16,
            {"method": "full", "precision": "bf16-mixed", "batch": 4, "seq": 2048},
        ),
        ("llama-3.1-8b", 80, {"method": "full", "precision": "bf16-mixed"}),
    ],
)
def test_the_plan_is_the_cheapest_that_fits(config, gib, job):
    p = plan.plan(config, gib, **job)
    names = plan._candidates(job, tuple(plan.LEVERS))
    for r in range(len(names) + 1):
        for combo in itertools.combinations(names, r):
            if plan._order(combo, plan.COSTS) >= plan._order(p.levers, plan.COSTS):
                continue
            extra = plan._combined(combo)
            if extra is None or not plan.trains(combo, **job):
                continue
            try:
                got = peak.training_peak(config, **{**job, **extra}).peak
            except LabkitError:
                continue
            assert got > gib * GIB, (combo, p.levers)


def test_an_exact_plan_wins_over_a_cheaper_one_that_changes_training():
    job = {"method": "full", "precision": "bf16-mixed", "batch": 4, "seq": 2048}
    inexact = [n for n in plan.LEVERS if n not in plan.EXACT]
    free = dict.fromkeys(inexact, 0.0)  # levers that change the training, made free
    p = plan.plan("qwen2.5-0.5b", 16, costs=free, **job)
    assert p.levers and set(p.levers) <= plan.EXACT, p.levers
    changing = plan.plan("qwen2.5-0.5b", 16, levers="pure_bf16,chunked_loss", **job)
    assert "pure_bf16" in changing.levers and changing.cost < p.cost  # cheaper, yet not chosen


def test_a_job_that_fits_needs_no_lever():
    p = plan.plan("qwen2.5-0.5b", 80, method="lora", batch=1, seq=256)
    assert p.levers == () and p.cost == 0 and p.peak == p.baseline


def test_costs_move_the_plan():
    usual = plan.plan("llama-3.1-8b", 24, **LORA_8B)
    dear = plan.plan(
        "llama-3.1-8b", 24, **LORA_8B, costs={"checkpoint_every_2": 5.0, "checkpointing": 5.0}
    )
    assert usual.levers == ("checkpoint_every_2",)
    assert not {"checkpointing", "checkpoint_every_2"} & set(dear.levers)
    assert dear.peak <= 24 * GIB


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"levers": "fused_loss"}, "unknown lever 'fused_loss'"),
        ({"levers": "chunked_loss", "costs": {"chunked_loss": 0.1}}, None),
    ],
)
def test_lever_names_are_checked(kwargs, match):
    if match is None:
        assert plan.plan("llama-3.1-8b", 80, **LORA_8B, **kwargs).levers == ()
        return
    with pytest.raises(LabkitError, match=match) as err:
        plan.plan("llama-3.1-8b", 24, **LORA_8B, **kwargs)
    assert "\n" not in str(err.value)


def test_levers_text_says_offload_turns_checkpointing_on():
    assert plan.LEVERS["offload_activations"]["checkpointing"] is True  # what the text names
    assert plan.levers_text(("chunked_loss", "offload_activations")) == (
        "chunked_loss + offload_activations (checkpointing + offload)"
    )
    assert plan.levers_text(()) == "" and plan.levers_text("adafactor") == "adafactor"
    with pytest.raises(LabkitError, match="unknown lever"):
        plan.levers_text(("offload",))


def test_nothing_fits_is_one_line():
    with pytest.raises(LabkitError, match="nothing fits 4 GiB") as err:
        plan.plan("llama-3.1-8b", 4, method="full")
    assert "\n" not in str(err.value)


def test_nothing_fits_names_the_best_set_and_the_levers_that_hardly_move_the_job():
    """LoRA 8B keeps a tiny optimizer state: the optimizer levers are tried but barely move its
    peak, so the line sets them apart from the levers that lower it."""
    with pytest.raises(LabkitError) as err:
        plan.plan("llama-3.1-8b", 16, reserve=2 * 2**30, **LORA_8B)
    text = str(err.value)
    assert "\n" not in text and "smallest predicted peak is" in text
    movers, weak = text.split("lower this job's peak: ")[1].split("; tried too, under 1% each: ")
    weak, up = weak.split("; tried, raise it: ")
    assert "chunked_loss" in movers and "checkpointing" in movers
    assert "adamw8bit" in weak and "adamw8bit" not in movers
    # pure bf16 on a bf16 base raises the peak: listed apart, not as "under 1%"
    pure = peak.training_peak("llama-3.1-8b", **{**LORA_8B, **plan.LEVERS["pure_bf16"]}).peak
    assert pure > peak.training_peak("llama-3.1-8b", **LORA_8B).peak
    assert "pure_bf16" in up and "pure_bf16" not in weak + movers
    best = text.split("within 1% of it: ")[1].split("(set: ")[1].split(" (")[0].split(" + ")
    assert "chunked_loss" in best and not {"adamw8bit", "adafactor", "galore"} & set(best)


def test_nothing_fits_says_when_the_weights_alone_exceed_the_room():
    """LoRA 8B at batch 1 on 16 GiB less 2 GiB: its bf16 weights alone exceed the room, so the
    line does not suggest a smaller batch or sequence; on a card the weights fit, it does."""
    with pytest.raises(plan.NoPlan) as err:
        plan.plan("llama-3.1-8b", 16, reserve=2 * 2**30, **LORA_8B)
    text, room = str(err.value), err.value.room
    weights = peak.training_peak("llama-3.1-8b", **LORA_8B).alive["weights"]
    assert weights > room and f"the weights alone are {weights / GIB:.2f} GiB" in text
    assert "--batch" not in text and text.endswith("try QLoRA, or more GPUs")
    long = {**LORA_8B, "seq": 65536}  # weights fit 24 GiB, the activations of 64k tokens do not
    with pytest.raises(plan.NoPlan) as err:
        plan.plan("llama-3.1-8b", 24, **long)
    assert "try a smaller --batch or --seq" in str(err.value)
    assert "weights alone" not in str(err.value)


def test_nothing_fits_carries_every_sets_peak_and_the_room():
    """The error line names two sets (the smallest peak, and the fewest levers within 1%): the
    exception carries each set's peak so a caller can name both."""
    with pytest.raises(plan.NoPlan) as err:
        plan.plan("llama-3.1-8b", 16, reserve=2 * 2**30, **LORA_8B)
    reached, room = err.value.reached, err.value.room
    assert room == 14 * GIB and min(reached.values()) > room
    assert reached[()] == peak.training_peak("llama-3.1-8b", **LORA_8B).peak
    lowest = min(reached, key=reached.get)
    # each figure names its own set: the smallest peak's, then the fewest levers within 1%
    assert f"{reached[lowest] / GIB:.2f} GiB (set: {plan.levers_text(lowest)})" in str(err.value)
    fewest = min((c for c, p in reached.items() if p <= 1.01 * reached[lowest]), key=len)
    assert fewest != lowest and "adafactor" in lowest and "adafactor" not in fewest
    fewest_text = f"fewest levers within 1% of it: {reached[fewest] / GIB:.2f} GiB (set: "
    assert fewest_text in str(err.value)
    got = peak.training_peak("llama-3.1-8b", **{**LORA_8B, **plan.options_of(lowest)}).peak
    assert got == reached[lowest]


def test_the_runner_up_is_the_next_set_that_fits_in_the_planners_order():
    p = plan.plan("llama-3.1-8b", 24, **LORA_8B)
    assert p.runner_up is not None and not set(p.levers) <= set(p.runner_up)
    after = peak.training_peak("llama-3.1-8b", **{**LORA_8B, **plan.options_of(p.runner_up)})
    assert after.peak <= 24 * GIB
    assert plan._order(p.runner_up, plan.COSTS) >= plan._order(p.levers, plan.COSTS)
    # no other set before it in the planner's order fits, but the plan plus more levers
    names = plan._candidates(LORA_8B, tuple(plan.LEVERS))
    for r in range(len(names) + 1):
        for combo in itertools.combinations(names, r):
            if set(p.levers) <= set(combo) or plan._combined(combo) is None:
                continue
            if plan._order(combo, plan.COSTS) < plan._order(p.runner_up, plan.COSTS):
                options = {**LORA_8B, **plan.options_of(combo)} if combo else LORA_8B
                assert peak.training_peak("llama-3.1-8b", **options).peak > 24 * GIB, combo
    assert plan.plan("llama-3.1-8b", 80, **LORA_8B).runner_up is None  # fits as it is


def test_nothing_fits_names_the_reserve_and_no_remedy_the_job_already_takes():
    with pytest.raises(LabkitError) as err:
        plan.plan("llama-3.1-8b", 16, reserve=GIB, **LORA_8B)
    msg = str(err.value)
    assert "16 GiB less a reserve of 1.00 GiB" in msg and "QLoRA" in msg
    assert "LoRA or QLoRA" not in msg  # the job is LoRA already
    with pytest.raises(LabkitError) as err:
        plan.plan("llama-3.1-8b", 4, method="qlora", precision="bf16-mixed", seq=2048)
    assert "QLoRA" not in str(err.value) and "reserve" not in str(err.value)


def _cli(argv, capsys):
    code = estimate_cli.cli_main(argv)
    return code, capsys.readouterr().out


def test_cli_json_has_the_plan_and_its_peak(capsys):
    argv = ["llama-3.1-8b", "--method", "lora", "--precision", "bf16-mixed", "--seq", "2048"]
    code, out = _cli([*argv, "--fit", "24", "--levers", "auto", "--json"], capsys)
    got = json.loads(out)
    assert code == 0
    assert isinstance(got["plan"], list) and got["plan"]
    assert got["peak"] <= 24 * GIB < got["baseline_peak"]
    want = plan.plan("llama-3.1-8b", 24, **LORA_8B)
    assert got["plan"] == list(want.levers) and got["peak"] == want.peak
    assert got["plan_conditions"] == list(want.conditions)
    code, text = _cli([*argv, "--fit", "24", "--levers", "auto"], capsys)
    assert "plan for 24 GiB (no reserve: --reserve GIB): " + " + ".join(want.levers) in text
    assert f"time per step {plan.cost_text(want.levers)}" in text and "range over" in text


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["llama-3.1-8b", "--method", "full", "--fit", "4", "--levers", "auto"], "nothing fits"),
        (["llama-3.1-8b", "--levers", "auto"], "needs --fit"),
        (["llama-3.1-8b", "--fit", "24", "--levers", "nope"], "unknown lever"),
    ],
)
def test_cli_errors_are_one_line(argv, match):
    with pytest.raises(LabkitError, match=match) as err:
        estimate_cli.cli_main(argv)
    assert "\n" not in str(err.value)


def _record_costs(record):
    """The cost of each lever as the record states it, computed here from the JSON."""
    out = {}
    for name, entry in record["levers"].items():
        if entry["measured"]:
            out[name] = max(0.0, round(entry["ratio"]["median"] - 1, 4))
        else:
            out[name] = entry["cost"]
    return out


def test_costs_are_the_records_figures():
    record = json.loads(plan.RECORD.read_text())
    want = _record_costs(record)
    assert set(plan.COSTS) == set(plan.LEVERS)
    assert plan.COSTS == {n: want[n] for n in plan.LEVERS}
    measured = {n for n, e in record["levers"].items() if e["measured"]}
    assert measured and "offload_activations" not in measured  # GPU only: argued, marked so
    assert "why" in record["levers"]["offload_activations"]


def test_a_lever_missing_from_the_record_is_a_clear_error(tmp_path):
    record = json.loads(plan.RECORD.read_text())
    del record["levers"]["galore"]
    path = tmp_path / "lever_costs.json"
    path.write_text(json.dumps(record))
    with pytest.raises(LabkitError, match="no entry for lever 'galore'") as err:
        plan.load_costs(path)
    assert "\n" not in str(err.value) and "benchmarks/lever_costs.py" in str(err.value)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (None, "cannot read the lever-cost record"),
        ("{not json", "cannot read the lever-cost record"),
        ('{"levers": []}', "has no 'levers' table"),
    ],
)
def test_a_missing_or_broken_record_is_a_clear_error(tmp_path, text, match):
    path = tmp_path / "lever_costs.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(LabkitError, match=match) as err:
        plan.load_costs(path)
    assert "\n" not in str(err.value)


def test_an_entry_without_a_cost_is_a_clear_error(tmp_path):
    record = json.loads(plan.RECORD.read_text())
    record["levers"]["checkpointing"] = {"measured": True}
    path = tmp_path / "lever_costs.json"
    path.write_text(json.dumps(record))
    with pytest.raises(LabkitError, match="lever 'checkpointing' .* has no cost") as err:
        plan.load_costs(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("names", "options"),
    [
        ("chunked_loss", {"loss": "chunked"}),
        (
            "checkpoint_every_2,chunked_loss",
            {"checkpointing": True, "checkpoint_every": 2, "loss": "chunked"},
        ),
        ("adamw8bit", {"optimizer": "adamw8bit"}),
    ],
)
def test_estimate_with_levers_is_the_peak_with_their_options(names, options, capsys):
    code, out = _cli(
        ["llama-3.1-8b", "--method", "lora", "--seq", "2048", "--with", names, "--json"], capsys
    )
    got = json.loads(out)
    want = peak.training_peak("llama-3.1-8b", method="lora", seq=2048, **options).peak
    assert code == 0 and got["peak"] == want and got["levers"] == names.split(",")
    code, text = _cli(
        ["llama-3.1-8b", "--method", "lora", "--seq", "2048", "--with", names], capsys
    )
    assert "levers applied (--with): " + " + ".join(names.split(",")) in text


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--with", "nope"], "unknown lever 'nope'"),
        (["--with", "adamw8bit,adafactor"], "set the same option differently"),
        (["--with", "chunked_loss", "--mode", "infer"], "--with applies levers"),
        (["--with", "chunked_loss", "--fit", "24", "--levers", "auto"], "--with applies levers"),
    ],
)
def test_estimate_with_bad_levers_is_one_line(argv, match, capsys):
    with pytest.raises(LabkitError, match=match) as err:
        estimate_cli.cli_main(["llama-3.1-8b", *argv])
    assert "\n" not in str(err.value)


def test_a_job_the_levers_cannot_be_predicted_for_is_refused_in_one_line():
    """Eager attention's peak comes from the dry run, where no lever is predicted: the planner says
    so instead of reporting that nothing fits after trying none of them."""
    with pytest.raises(LabkitError, match="cannot plan levers") as err:
        plan.plan("llama-3.1-8b", 24, batch=1, seq=2048, attention="eager")
    assert "\n" not in str(err.value) and "dry run" in str(err.value)


def test_cost_ranges_are_the_records_rounds_and_hold_the_median():
    record = json.loads(plan.RECORD.read_text())
    for name, entry in record["levers"].items():
        got = plan.COST_RANGES[name]
        if not entry["measured"]:
            assert got is None and "argued" in plan.cost_text([name])
            continue
        ratio = entry["ratio"]
        assert got == (ratio["min"] - 1, ratio["max"] - 1)
        assert got[0] <= ratio["median"] - 1 <= got[1]
        assert plan.cost_range([name]) == pytest.approx(got)
        rounds = len(entry["ratios"])
        assert f"range over {rounds} rounds: {got[0]:+.0%}..{got[1]:+.0%}" in plan.cost_text([name])
    assert plan.cost_text(()) == "+0%"


def test_a_sets_cost_range_sums_the_levers_round_by_round():
    """Two levers' extra times are added in the same round (the rounds are interleaved), so the
    set's range is never wider than the sum of the levers' own ranges, and narrower when their
    slow rounds differ; an argued figure is added to every round."""
    record = json.loads(plan.RECORD.read_text())["levers"]
    pair = ("chunked_loss", "checkpoint_every_2")
    sums = [a + b - 2 for a, b in zip(*(record[n]["ratios"] for n in pair), strict=True)]
    low, high = plan.cost_range(pair)
    assert (low, high) == pytest.approx((min(sums), max(sums)))
    wide = [sum(plan.COST_RANGES[n][i] for n in pair) for i in (0, 1)]
    assert wide[0] <= low <= high <= wide[1] and (low, high) != pytest.approx(tuple(wide))
    with_argued = plan.cost_range([*pair, "offload_activations"])
    assert with_argued == pytest.approx(
        (low + plan.COSTS["offload_activations"], high + plan.COSTS["offload_activations"])
    )
    assert plan.cost_range(["offload_activations"]) is None


def test_a_record_without_per_round_ratios_is_refused_in_one_line(tmp_path):
    record = json.loads(plan.RECORD.read_text())
    del record["levers"]["galore"]["ratios"]
    path = tmp_path / "costs.json"
    path.write_text(json.dumps(record))
    with pytest.raises(LabkitError, match="no per-round 'ratios'") as err:
        plan.load_cost_rounds(path)
    assert "\n" not in str(err.value)
    record = json.loads(plan.RECORD.read_text())
    record["levers"]["galore"]["ratios"] = record["levers"]["galore"]["ratios"][:-1]
    path.write_text(json.dumps(record))
    with pytest.raises(LabkitError, match="different numbers of rounds"):
        plan.load_cost_rounds(path)


FULL_05B = {"method": "full", "precision": "bf16-mixed", "batch": 1, "seq": 256}


def test_the_optimizer_in_backward_names_its_conditions_and_is_not_planned_with_accumulation():
    """Exact only without clipping and accumulation: a plan with it says so, and a job that
    accumulates micro-batches never gets it (the gradients of a step never all exist)."""
    base = peak.training_peak("qwen2.5-0.5b", **FULL_05B).peak
    lever = peak.training_peak("qwen2.5-0.5b", **FULL_05B, optimizer_in_backward=True).peak
    assert lever < base
    gib = (base + lever) / 2 / GIB  # between the two: the lever alone brings the job under
    p = plan.plan("qwen2.5-0.5b", gib, levers="optimizer_in_backward", **FULL_05B)
    assert p.levers == ("optimizer_in_backward",)
    assert any("no gradient clipping" in c and "accumulation" in c for c in p.conditions)
    with pytest.raises(LabkitError, match="none left to add"):
        plan.plan("qwen2.5-0.5b", gib, levers="optimizer_in_backward", grad_accum=2, **FULL_05B)
    assert plan.plan("qwen2.5-0.5b", 80, **FULL_05B).conditions == ()


def test_cli_components_leave_out_whole_the_levers_the_estimator_cannot_hold(capsys):
    """``checkpoint_every_2`` sets ``checkpoint_every``, which the estimator's job has no field
    for: the components are the job's without it (not the every-block checkpointing job), and
    the JSON and the table say so; the peak is the planned job's."""
    argv = ["llama-3.1-8b", "--method", "lora", "--precision", "bf16-mixed", "--seq", "2048"]
    code, out = _cli([*argv, "--with", "checkpoint_every_2", "--json"], capsys)
    got = json.loads(out)
    without = estimator.training_memory("llama-3.1-8b", **LORA_8B)
    every_block = estimator.training_memory("llama-3.1-8b", **LORA_8B, checkpointing=True)
    assert code == 0 and got["components_without"] == ["checkpoint_every_2"]
    assert got["activations"] == without.activations != every_block.activations
    assert got["total"] == without.total
    code, text = _cli([*argv, "--with", "checkpoint_every_2"], capsys)
    assert "total are the job's without checkpoint_every_2" in text
    # a lever the estimator's job holds (the optimizer) is in the components
    code, out = _cli([*argv, "--method", "full", "--with", "adamw8bit", "--json"], capsys)
    got = json.loads(out)
    eight = estimator.training_memory(
        "llama-3.1-8b", **{**LORA_8B, "method": "full"}, optimizer="adamw8bit"
    )
    assert got["components_without"] == [] and got["optimizer"] == eight.optimizer


def test_cli_reserve_is_kept_free_by_the_plan(capsys):
    argv = ["llama-3.1-8b", "--method", "lora", "--precision", "bf16-mixed", "--seq", "2048"]
    code, out = _cli([*argv, "--fit", "24", "--levers", "auto", "--reserve", "2", "--json"], capsys)
    got = json.loads(out)
    want = plan.plan("llama-3.1-8b", 24, reserve=2 * GIB, **LORA_8B)
    assert code == 0 and got["plan"] == list(want.levers) and got["peak"] <= 22 * GIB
    none = plan.plan("llama-3.1-8b", 24, **LORA_8B)
    assert want.levers != none.levers  # the reserve changes this plan: the check can fail
    code, text = _cli([*argv, "--fit", "24", "--levers", "auto", "--reserve", "2"], capsys)
    assert "plan for 24 GiB less a reserve of 2 GiB" in text
    with pytest.raises(LabkitError, match="--reserve GIB applies to --fit") as err:
        estimate_cli.cli_main([*argv, "--reserve", "2"])
    assert "\n" not in str(err.value)


def test_pure_bf16_is_predicted_with_the_update_loop_it_runs(capsys):
    """``pure_bf16`` is labkit's ``StochasticAdamW``, torch's single-tensor loop (no foreach
    copy of the parameters): the planner, ``--with`` and notebook 18's table predict that loop,
    so a card its peak fits is planned (70 GiB for the full 8B job: 61.8, not foreach's 74.8),
    and the components still hold its bf16 weights, gradients and state."""
    import torch

    from labkit.memory import levers

    opt = levers.StochasticAdamW([torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))])
    assert opt.defaults["foreach"] is False and not opt.defaults["fused"]
    assert plan.LEVERS["pure_bf16"]["impl"] == "single"
    full = {"method": "full", "precision": "bf16-mixed", "batch": 1, "seq": 2048}
    bf16_job = {**full, "precision": "bf16"}
    single = peak.training_peak("llama-3.1-8b", **bf16_job, impl="single").peak
    foreach = peak.training_peak("llama-3.1-8b", **bf16_job, impl="foreach").peak
    assert single <= 70 * GIB < foreach
    p = plan.plan("llama-3.1-8b", 70, levers="pure_bf16", **full)
    assert p.levers == ("pure_bf16",) and p.peak == single
    argv = ["llama-3.1-8b", "--method", "full", "--precision", "bf16-mixed", "--seq", "2048"]
    code, out = _cli([*argv, "--with", "pure_bf16", "--json"], capsys)
    got = json.loads(out)
    bf16 = estimator.training_memory("llama-3.1-8b", **bf16_job)
    assert code == 0 and got["peak"] == single and got["components_without"] == []
    assert got["weights"] == bf16.weights and got["optimizer"] == bf16.optimizer


def test_accumulation_is_the_largest_micro_batch_that_fits_without_a_lever():
    job = {"method": "full", "precision": "bf16-mixed", "batch": 4, "seq": 2048}
    reserve = peak.gpu_reserve()
    room = 24 * GIB - reserve
    micro, steps, got = plan.accumulation("qwen2.5-0.5b", 24, reserve=reserve, **job)
    assert micro * steps == 4 and steps > 1 and got <= room
    again = peak.training_peak("qwen2.5-0.5b", **{**job, "batch": micro, "grad_accum": steps})
    assert again.peak == got
    # the next divisor of the batch does not fit: accumulation keeps every gradient alive
    bigger = {**job, "batch": 2 * micro, "grad_accum": steps // 2}
    assert peak.training_peak("qwen2.5-0.5b", **bigger).peak > room
    assert plan.accumulation("qwen2.5-0.5b", 16, reserve=reserve, **job) is None
    assert plan.accumulation("qwen2.5-0.5b", 80, **job)[:2] == (4, 1)  # fits as it is


def test_accumulation_is_none_when_micro_batch_1_does_not_fit_and_checks_the_batch():
    assert plan.accumulation("llama-3.1-8b", 16, **LORA_8B) is None
    with pytest.raises(LabkitError, match="batch must be"):
        plan.accumulation("qwen2.5-0.5b", 24, batch=0)


FULL_8B = {"method": "full", "precision": "bf16-mixed", "batch": 1, "seq": 2048}


def test_trains_rejects_pure_bf16_rounded_to_nearest():
    assert plan.trains("pure_bf16") and plan.trains(()) and plan.trains("adafactor,checkpointing")
    for other in sorted(plan.ROUNDED_TO_NEAREST):
        assert not plan.trains(["pure_bf16", other]), other
    assert not plan.trains("pure_bf16", optimizer="adafactor")  # the job's own optimizer
    assert plan.trains("pure_bf16", optimizer="adamw")


def test_the_planner_never_picks_pure_bf16_rounded_to_nearest():
    # only a set with pure_bf16 + adafactor fits the 8B full fine-tune on 24 GiB less 2 GiB:
    # the planner says nothing (that trains) fits, and names the set it left out
    with pytest.raises(plan.NoPlan) as err:
        plan.plan("llama-3.1-8b", 24, reserve=2 * GIB, **FULL_8B)
    assert err.value.left_out, str(err.value)
    for s, at in err.value.left_out.items():
        assert not plan.trains(s) and at <= 22 * GIB
        assert plan.levers_text(s) in str(err.value)
    assert str(err.value).startswith("nothing that trains fits 24 GiB")
    assert all(plan.trains(s) for s in err.value.reached)
    # the 80 GiB card: a plan, and neither it nor its runner-up rounds bf16 to nearest
    p = plan.plan("llama-3.1-8b", 80, reserve=2 * GIB, **FULL_8B)
    assert plan.trains(p.levers) and plan.trains(p.runner_up or ())
    # allowed only the left-out set's levers, the planner still finds nothing that trains
    gone = next(iter(err.value.left_out))
    with pytest.raises(plan.NoPlan) as again:
        plan.plan("llama-3.1-8b", 24, levers=gone, reserve=2 * GIB, **FULL_8B)
    assert gone in again.value.left_out
