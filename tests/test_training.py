"""labkit.training.finetune: masking, collator, exact match, the Trainer path and prefix-tuning generation."""

import pytest
import torch

from labkit import LabkitError
from labkit.data import loaders
from labkit.models import zoo
from labkit.training import finetune
from labkit.tuners import peft_methods

ROWS = [
    {
        "prompt": "Human: Where does the fox live?\nAssistant:",
        "response": "The fox lives in the forest.",
    },
    {
        "prompt": "Human: What is the opposite of hot?\nAssistant:",
        "response": "The opposite of hot is cold.",
    },
]


def test_chat_features_mask_the_prompt(tok):
    feats = finetune.chat_features(tok, ROWS)
    for row, feat in zip(ROWS, feats, strict=True):
        n_prompt = len(tok(row["prompt"])["input_ids"])
        assert feat["labels"][:n_prompt] == [finetune.IGNORE] * n_prompt
        assert feat["labels"][n_prompt:] == feat["input_ids"][n_prompt:]
        assert feat["input_ids"][-1] == tok.eos_token_id
        answer = tok.decode(feat["input_ids"][n_prompt:], skip_special_tokens=True)
        assert answer.strip() == row["response"]
    with pytest.raises(LabkitError, match="unknown target"):
        finetune.chat_features(tok, ROWS, target="answer")


def test_collator_pads_inputs_labels_and_mask(tok):
    feats = finetune.chat_features(tok, ROWS)
    batch = finetune.ChatCollator(tok.pad_token_id)(feats)
    lengths = [len(f["input_ids"]) for f in feats]
    assert batch["input_ids"].shape == (2, max(lengths))
    for i, n in enumerate(lengths):
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (max(lengths) - n)
        assert (batch["labels"][i, n:] == finetune.IGNORE).all()
        assert (batch["input_ids"][i, n:] == tok.pad_token_id).all()
        assert batch["labels"][i, :n].tolist() == feats[i]["labels"]


def test_exact_match():
    assert finetune.exact_match(["a b ", "c"], ["a b", "d"]) == 0.5
    assert finetune.exact_match(["The fox."], ["The fox"]) == 0.0
    with pytest.raises(LabkitError, match="equal, non-empty"):
        finetune.exact_match(["a"], [])
    with pytest.raises(LabkitError, match="equal, non-empty"):
        finetune.exact_match([], [])


def test_train_runs_the_trainer_and_lowers_the_loss(tok, capsys):
    from transformers import TrainerCallback

    class Epochs(TrainerCallback):
        seen: list[float] = []

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.seen.append(metrics["eval_loss"])

    model = peft_methods.attach("tiny-llama", "lora", r=4)
    before = finetune.chat_loss(model, tok, "validation")
    run = finetune.train(
        model,
        tok,
        rows=loaders.load_chat("train")[:32],
        eval_features=finetune.chat_features(tok, loaders.load_chat("validation")[:8]),
        callbacks=[Epochs()],
        num_train_epochs=2,
        logging_steps=1,
        learning_rate=1e-2,
        disable_tqdm=True,
    )
    assert run.steps == 4 and len(run.losses) == 4 and run.seconds_per_step > 0
    assert len(Epochs.seen) == 2  # eval_strategy "epoch" by default when there is eval data
    assert "'loss'" not in capsys.readouterr().out  # no log dicts printed when bars are off
    assert finetune.chat_loss(model, tok, "validation") < before
    assert not model.training


def test_evaluate_chat_and_side_by_side(tok):
    model = zoo.load_model("tiny-llama")
    result = finetune.evaluate_chat(model, tok, "test", limit=3)
    assert len(result["predictions"]) == len(result["references"]) == 3
    assert 0.0 <= result["exact_match"] <= 1.0
    table = finetune.side_by_side(result["rows"], result["predictions"], result["references"], n=2)
    assert table.count("Q: ") == 2 and "✓" in table


def test_side_by_side_marks_a_cut_answer():
    row = {"prompt": "Human: Where?\nAssistant:", "response": "x" * 70}
    table = finetune.side_by_side([row], ["short"], ["x" * 70], n=1)
    assert "before: 'short'\n" in table  # not cut, no mark
    assert "after:  '" + "x" * 60 + "…' ✓" in table  # cut at 60, judged on the whole answer


def test_prefix_tuning_generates_with_its_prefix(tok):
    """The pitfall: generate() with the cache drops the prefix; generate_answers must not."""
    prompts = [r["prompt"] for r in ROWS]
    base = zoo.load_model("tiny-llama")
    base_answers = finetune.generate_answers(base, tok, prompts, max_new_tokens=6)
    model = peft_methods.attach("tiny-llama", "prefix")
    with torch.no_grad():  # a strong prefix, as after training
        model.prompt_encoder["default"].embedding.weight.normal_(0, 3.0)
    answers = finetune.generate_answers(model, tok, prompts, max_new_tokens=6)
    assert answers != base_answers
    # what the pitfall looks like: with the cache the prefix is ignored
    enc = tok(prompts[0], return_tensors="pt")
    cached = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=0)
    plain = base.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=0)
    prefix_free = tok.decode(cached[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert prefix_free == tok.decode(
        plain[0, enc["input_ids"].shape[1] :], skip_special_tokens=True
    )


@pytest.mark.parametrize("method", ["prompt", "p-tuning-mlp"])
def test_prompt_learning_answers_equal_greedy_decoding_of_the_forward_pass(tok, method):
    """With the cache, peft 0.21's generate() drifts for virtual-token methods; ours must not."""
    model = peft_methods.attach("tiny-llama", method)
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.normal_(0, 0.5)
    prompt = ROWS[0]["prompt"]
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    n_prompt = ids.shape[1]
    with torch.no_grad():
        for _ in range(6):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
    by_hand = tok.decode(ids[0, n_prompt:], skip_special_tokens=True).strip().split("\n")[0].strip()
    assert finetune.generate_answers(model, tok, [prompt], max_new_tokens=6) == [by_hand]


def test_training_arguments_course_or_library_defaults():
    """One name for TrainingArguments: the course's defaults, or the library's (a search's)."""
    from transformers import TrainingArguments

    course = finetune.training_arguments(learning_rate=5e-3)
    assert course.learning_rate == 5e-3 and course.num_train_epochs == 10 and course.seed == 0
    library = finetune.training_arguments(course_defaults=False, eval_strategy="epoch")
    plain = TrainingArguments(output_dir=library.output_dir)
    assert library.learning_rate == plain.learning_rate and library.eval_strategy == "epoch"
    assert library.num_train_epochs == plain.num_train_epochs


def test_log_loss_axis_labels_ticks_below_the_lowest_loss():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    curve, other = [2.0, 0.5, 0.1, 0.023], [1.5, 0.3]
    ax.plot(curve)
    ax.plot(other)
    bottom = finetune.log_loss_axis(ax, curve, other)
    fig.canvas.draw()
    shown = {t.get_text().strip("$").removeprefix("\\mathdefault{").removesuffix("}")
             for t in ax.get_yticklabels() if t.get_text()}  # fmt: skip
    plt.close(fig)
    assert bottom == pytest.approx(0.02) and ax.get_yscale() == "log"
    low = ax.get_ylim()[0]
    assert low == pytest.approx(0.02) and low < min(curve)  # the lowest loss above a tick
    assert {"0.02", "0.05", "0.1", "0.2", "0.5", "1", "2"} <= shown, shown  # decimals, 1-2-5
    fig, ax = plt.subplots()
    assert finetune.log_loss_axis(ax, [3.0, 0.4]) == pytest.approx(0.2)  # 0.2 at most
    assert finetune.log_loss_axis(ax, [0.0111]) == pytest.approx(0.005)  # below 0.9x: 0.00999
    plt.close(fig)
    with pytest.raises(LabkitError, match="positive finite losses"):
        finetune.log_loss_axis(ax, [0.5, 0.0])
    with pytest.raises(LabkitError, match="positive finite losses"):
        finetune.log_loss_axis(ax)
