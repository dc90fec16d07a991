"""labkit.training.forgetting: the probe (= greedy decoding), corpus loss through prompt tuning, replay,
the tracked Trainer run with keep-best (the runs of notebook 16 and their seed record:
tests/test_studies.py)."""

import json

import pytest
import torch

from labkit import LabkitError
from labkit.data import generator, loaders
from labkit.models import zoo
from labkit.training import forgetting as fg
from labkit.training import lm_loss
from labkit.tuners import peft_methods


def test_probe_items_ask_only_unseen_facts():
    train = {(r["intent"], r["entity"]) for r in loaders.load_chat("train")}
    unseen = fg.unseen_facts()
    assert unseen and not {(f["intent"], f["entity"]) for f in unseen} & train
    items = fg.probe_items(per_fact=2, counts=5)
    assert len(items) == 2 * len(unseen) + 5
    assert {it.kind for it in items} == set(fg.KINDS)
    answers = {(f["intent"], f["answer"]) for f in unseen}
    assert all((it.kind, it.answer) in answers for it in items if it.kind != "count")
    count = next(it for it in items if it.kind == "count")
    words = count.prompt.split(": ")[1].rstrip(",").split(", ")
    assert generator.NUMBERS.index(count.answer) == generator.NUMBERS.index(words[-1]) + 1
    assert fg.probe_items(seed=3) == fg.probe_items(seed=3)
    with pytest.raises(LabkitError, match="per_fact"):
        fg.probe_items(per_fact=3)


def test_cloze_items_cover_exactly_the_facts_asked():
    rows = loaders.load_chat("test")[:42]
    asked = {(r["intent"], r["entity"]) for r in rows}
    items = fg.cloze_items(rows)
    assert {(it.kind, it.entity) for it in items} == asked
    assert "next" in {it.kind for it in items} and "count" not in {it.kind for it in items}
    assert len(fg.cloze_items(rows, per_fact=2)) == 2 * len(asked)
    with pytest.raises(LabkitError, match="chat train split"):
        fg.cloze_items(loaders.load_chat("train")[:3])
    with pytest.raises(LabkitError, match="no chat rows"):
        fg.cloze_items([])


def test_probe_accuracy_equals_greedy_decoding(tok):
    model = zoo.load_model("zoo-llama")
    items = fg.probe_items(counts=4)[::6]
    # corrupt half the answers so that both outcomes occur
    items = [
        it if i % 2 else fg.ProbeItem(it.prompt, "violet " + it.answer, it.kind)
        for i, it in enumerate(items)
    ]
    result = fg.probe_accuracy(model, tok, items)
    for item, exact in zip(items, result["exact"], strict=True):
        prompt = tok(item.prompt, return_tensors="pt")["input_ids"]
        n_answer = len(tok(item.prompt + " " + item.answer)["input_ids"]) - prompt.shape[1]
        out = model.generate(prompt, max_new_tokens=n_answer, do_sample=False)
        greedy = tok.decode(out[0, prompt.shape[1] :], skip_special_tokens=True).strip()
        assert exact == (greedy == item.answer), (item, greedy)
    assert 0 < result["exact_match"] < 1 and 0 < result["token_accuracy"] < 1
    with pytest.raises(LabkitError, match="no probe items"):
        fg.probe_accuracy(model, tok, [])


def test_losses_and_the_probe_drop_virtual_tokens(tok):
    texts = fg.corpus_texts(4)
    base_loss = lm_loss.causal_lm_loss(zoo.load_model("zoo-llama"), tok, texts)
    prompt = peft_methods.attach("zoo-llama", "prompt", seed=0)
    ids = tok(texts[:1], return_tensors="pt")["input_ids"]
    assert prompt(input_ids=ids).logits.shape[1] == ids.shape[1] + 8
    assert lm_loss.aligned_logits(prompt, ids).shape[1] == ids.shape[1]
    with_prompt = lm_loss.causal_lm_loss(prompt, tok, texts)
    assert with_prompt != base_loss and abs(with_prompt - base_loss) < 0.5
    lora = peft_methods.attach("zoo-llama", "lora", seed=0)  # B = 0: exactly the base model
    assert lm_loss.causal_lm_loss(lora, tok, texts) == pytest.approx(base_loss)


def test_replay_mix(tok):
    assert fg.replay_count(170, 0.25) == 57 and fg.replay_count(170, 0.0) == 0
    with pytest.raises(LabkitError, match="replay fraction"):
        fg.replay_count(170, 1.0)
    feats = fg.replay_features(tok, 3, seed=1, max_tokens=20)
    assert len(feats) == 3 and all(f["input_ids"] == f["labels"] for f in feats)
    assert all(len(f["input_ids"]) == 20 for f in feats)
    assert feats == fg.replay_features(tok, 3, seed=1, max_tokens=20)


def test_rehearsed_finds_the_facts_a_text_states():
    items = fg.probe_items(counts=2)
    home = next(it for it in items if it.kind == "home")
    digits = generator.NUMBERS[1:9]  # "one".."eight": "twenty one" follows them up to 25
    nxt = next(it for it in items if it.kind == "next" and it.entity in digits)
    said = f"Tom went out. The {home.entity} lives in the {home.answer}. The end."
    other = f"The number after twenty {nxt.entity} is twenty {nxt.answer}."  # not nxt's fact
    got = fg.rehearsed([said, other], items)
    assert got["stated"] == [home] and got["verbatim"] == []
    story = f"The number after {nxt.entity} is {nxt.answer}."  # no probe template
    got = fg.rehearsed([f"{home.prompt} {home.answer}.", story], items)
    assert got["stated"] == [home, nxt] and got["verbatim"] == [home]
    assert fg.rehearsed([], items) == {"stated": [], "verbatim": []}
    with pytest.raises(LabkitError, match="list of strings"):
        fg.rehearsed("a story", items)


def test_tracked_run_keeps_the_best_epoch(tok):
    probe = fg.Probe(tok, fg.probe_items(counts=2)[:8], fg.corpus_texts(4), chat_limit=6)
    model = peft_methods.attach("tiny-llama", "lora", seed=0)
    run = fg.train(
        model, tok, probe, label="t", keep_best=True, num_train_epochs=2, learning_rate=1e-2
    )
    assert [row["epoch"] for row in run.history] == [0.0, 1.0, 2.0]
    assert all("eval_loss" in row for row in run.history[1:])
    assert run.history[-1]["chat_loss"] < run.history[0]["chat_loss"]
    best = min(run.history[1:], key=lambda row: row["eval_loss"])
    assert run.best["epoch"] == best["epoch"]
    assert run.best["corpus_loss"] == pytest.approx(best["corpus_loss"], abs=1e-5)
    assert 0 <= run.chat_em <= 1 and json.dumps(run.record())
    assert fg.forgetting(run.history, "corpus_loss") == pytest.approx(
        run.history[-1]["corpus_loss"] - run.history[0]["corpus_loss"]
    )
    with pytest.raises(LabkitError, match="unknown metric"):
        fg.forgetting(run.history, "accuracy")
    with pytest.raises(LabkitError, match="patience needs keep_best"):
        fg.train(model, tok, probe, patience=1)


def test_probe_tracker_measures_prompt_tuning(tok):
    probe = fg.Probe(tok, fg.probe_items(counts=1)[:4], fg.corpus_texts(2), chat_limit=0)
    model = peft_methods.attach("tiny-llama", "prompt", seed=0)
    row = probe.measure(model)
    assert set(row) == set(fg.METRICS)
    assert torch.isfinite(torch.tensor(list(row.values()))).all()


def test_loss_after_marker_splits_the_corpus_loss(tok):
    model = zoo.load_model("zoo-llama")
    texts = fg.corpus_texts(6)
    split = fg.loss_after_marker(model, tok, texts)
    assert split["all"] == lm_loss.causal_lm_loss(model, tok, texts)  # the same computation
    mixed = split["share_after"] * split["after"] + (1 - split["share_after"]) * split["rest"]
    assert mixed == pytest.approx(split["all"], rel=1e-4)
    assert 0 < split["share_after"] < 0.2 and split["p_end_after"] < 0.01
    with pytest.raises(LabkitError, match="not one token"):
        fg.loss_after_marker(model, tok, texts, marker="forest!")
