import collections

import pytest

from labkit import LabkitError
from labkit.data import generator, loaders


def test_files_match_the_generator_byte_for_byte(tmp_path):
    written = generator.write_all(tmp_path)
    for path in written:
        rel = path.relative_to(tmp_path)
        assert path.read_bytes() == (generator.DATA_DIR / rel).read_bytes(), rel


def test_chat_splits_hold_out_facts():
    splits = {s: loaders.load_chat(s) for s in loaders.SPLITS}
    assert [len(splits[s]) for s in loaders.SPLITS] == [170, 84, 84]
    entities = {s: {(r["intent"], r["entity"]) for r in rows} for s, rows in splits.items()}
    assert not entities["train"] & entities["test"]
    assert not entities["train"] & entities["validation"]
    assert not entities["validation"] & entities["test"]
    for row in splits["test"]:
        assert row["prompt"].startswith("Human: ") and row["prompt"].endswith("\nAssistant:")
        assert row["short"] in row["response"]


def test_corpus_states_every_fact_and_never_uses_the_chat_format():
    text = "\n".join(loaders.load_corpus("train"))
    assert "Human:" not in text and "Assistant:" not in text
    for fact in generator.facts():
        assert fact["response"] in text, fact


def test_sentiment_size_balance_and_noise():
    splits = {s: loaders.load_sentiment(s) for s in loaders.SPLITS}
    sizes = [len(splits[s]) for s in loaders.SPLITS]
    assert sum(sizes) >= 1000 and sizes == [1050, 225, 225]
    texts = [r["text"] for rows in splits.values() for r in rows]
    assert len(set(texts)) == len(texts)
    labels = collections.Counter(r["label"] for r in splits["train"])
    assert 0.4 < labels[1] / len(splits["train"]) < 0.6


def test_every_sentiment_sentence_fills_one_of_the_printed_templates():
    """SENTIMENT_TEMPLATES (printed in notebook 14) are the ones make_sentiment fills."""
    import re

    patterns = [
        re.compile(
            re.escape(t[0].upper() + t[1:])
            .replace(re.escape("{s1}"), "(?i:[a-z ]+)")
            .replace(re.escape("{s2}"), "[a-z ]+")
            .replace(re.escape("{intensifier}"), "(?:" + "|".join(generator.INTENSIFIERS) + ")")
            .replace(re.escape("{good}"), "[a-z]+")
            .replace(re.escape("{bad}"), "[a-z]+")
        )
        for t in generator.SENTIMENT_TEMPLATES
    ]
    rows = generator.make_sentiment(n=300, seed=5)
    used = set()
    for split in rows.values():
        for row in split:
            hits = [i for i, p in enumerate(patterns) if p.fullmatch(row["text"])]
            assert hits, row["text"]
            used.update(hits)
    assert used == set(range(len(generator.SENTIMENT_TEMPLATES)))


def test_unknown_split_is_a_clear_error():
    with pytest.raises(LabkitError, match="accepted: train, validation, test"):
        loaders.load_chat("dev")


def test_chat_rows_shown_finds_the_answer_and_its_pattern():
    """The prompt-tuning init text is the answer of a few held-out rows and shows the pattern of
    every row of their intent (notebooks 08 and 12 read both)."""
    test = loaders.load_chat("test")
    text = test[22]["response"]
    shown = loaders.chat_rows_shown(text)
    assert 22 in shown["answer"] and all(test[i]["response"] == text for i in shown["answer"])
    assert shown["intents"] == {test[22]["intent"]}
    assert shown["pattern"] == [i for i, r in enumerate(test) if r["intent"] == test[22]["intent"]]
    assert set(shown["answer"]) < set(shown["pattern"])
    nowhere = loaders.chat_rows_shown("Not an answer anywhere.")
    assert nowhere == {"answer": [], "intents": set(), "pattern": []}
    for bad in ("", None):
        with pytest.raises(LabkitError, match="non-empty string"):
            loaders.chat_rows_shown(bad)
    with pytest.raises(LabkitError, match="split"):
        loaders.chat_rows_shown(text, "dev")


def test_facts_asked_counts_facts_and_wordings():
    """All 84 held-out questions ask 28 facts, 3 wordings each (notebooks 11-13 print this line);
    a slice asks facts unevenly and says so; bad input is one clear error."""
    test = loaders.load_chat("test")
    assert loaders.facts_asked(test) == (
        "the 84 held-out questions ask 28 facts, 3 wordings each: "
        "one fact weighs 0.036 of exact match"
    )
    row = test[0]
    two = [row, dict(row), {**row, "entity": "another"}]
    assert loaders.facts_asked(two) == (
        "the 3 held-out questions ask 2 facts, 1-2 wordings each: "
        "one fact weighs 0.333-0.667 of exact match"
    )
    for bad in ([], [{"prompt": "no fact"}], None):
        with pytest.raises(LabkitError, match="chat rows"):
            loaders.facts_asked(bad)
