import json

from labkit import pretrain


def test_build_is_deterministic_and_records_provenance(tmp_path):
    kwargs = {"steps": 3, "batch": 2, "threads": 1, "log_every": 0, "max_texts": 60}
    a = pretrain.build(tmp_path / "a", **kwargs)
    b = pretrain.build(tmp_path / "b", **kwargs)
    assert a["sha256"] == b["sha256"]
    saved = json.loads((tmp_path / "a" / "provenance.json").read_text())
    for key in ("seed", "steps", "tokens_seen", "final_train_loss", "heldout_loss", "sha256"):
        assert key in saved
    assert saved["tokens_seen"] == 3 * 2 * pretrain.CONTEXT


def test_tokenizer_round_trips_corpus_text():
    from labkit import zoo

    tok = zoo.load_tokenizer("zoo-llama")
    text = 'Mia asked, "Where does the fox live?" Tom said, "The fox lives in the forest."'
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text


def test_cli_refuses_to_overwrite_without_force(tmp_path):
    import pytest

    from labkit import LabkitError

    (tmp_path / "model.safetensors").write_bytes(b"learner's model")
    with pytest.raises(LabkitError, match="--force"):
        pretrain.cli_main(["--out", str(tmp_path)])
    assert (tmp_path / "model.safetensors").read_bytes() == b"learner's model"
