import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from labkit import REPO_ROOT, LabkitError, zoo


def test_zoo_llama_loads_with_plain_from_pretrained_and_matches_provenance():
    folder = zoo.MODELS_DIR / "zoo-llama"
    prov = json.loads((folder / "provenance.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) == prov["parameters"]
    assert 1_000_000 <= prov["parameters"] <= 5_000_000
    assert model.config.max_position_embeddings >= 256
    for name, digest in prov["sha256"].items():
        assert zoo.sha256_file(folder / name) == digest
    assert (folder / "model.safetensors").stat().st_size <= 10 * 2**20
    # "far below an untrained model's" held-out loss
    assert prov["heldout_loss"] < 0.5 * prov["untrained_heldout_loss"]
    assert tok("The fox").input_ids[0] == tok.bos_token_id


def test_zoo_llama_heldout_loss_reproduces():
    from labkit import datasets
    from labkit.pretrain import mean_loss, pack

    prov = json.loads((zoo.MODELS_DIR / "zoo-llama" / "provenance.json").read_text())
    model, tok = zoo.load_model("zoo-llama"), zoo.load_tokenizer("zoo-llama")
    blocks = pack(tok, datasets.load_corpus("validation"))
    assert blocks.numel() == prov["corpus_tokens"]["validation"]
    assert mean_loss(model, blocks[:32]) == pytest.approx(prov["heldout_loss"], abs=0.1)


def test_zoo_llama_generates_corpus_like_text():
    model, tok = zoo.load_model("zoo-llama"), zoo.load_tokenizer("zoo-llama")
    ids = tok("The fox lives in the", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert tok.decode(out[0, ids.shape[1] :]).strip().startswith("forest")


def test_minilm_is_verified_and_loads():
    assert zoo.verify("minilm") == zoo.MINILM_SHA256
    model = AutoModelForSequenceClassification.from_pretrained(zoo.minilm_dir(), num_labels=2)
    assert 22_000_000 < sum(p.numel() for p in model.bert.parameters()) < 23_000_000
    tok = zoo.load_tokenizer("minilm")
    assert tok("hello world").input_ids[0] == tok.cls_token_id


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-gpt2", "tiny-bloom"])
def test_tiny_models_are_seeded_and_run_with_zoo_tokenizer(name):
    a, b = zoo.load_model(name, seed=3), zoo.load_model(name, seed=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    tok = zoo.load_tokenizer(name)
    assert len(tok) <= a.config.vocab_size
    ids = tok("The cow lives in the barn.", return_tensors="pt").input_ids
    assert a(ids).logits.shape == (1, ids.shape[1], a.config.vocab_size)


def test_tiny_qwen2_has_gqa_and_tied_embeddings():
    m = zoo.load_model("tiny-qwen2")
    assert m.config.num_key_value_heads < m.config.num_attention_heads
    assert m.get_input_embeddings().weight is m.get_output_embeddings().weight


def test_catalog_configs_load_offline():
    names = zoo.catalog_names()
    assert {
        "llama-2-7b",
        "llama-3.1-8b",
        "mistral-7b",
        "qwen2.5-0.5b",
        "qwen2.5-7b",
        "bloom-560m",
        "gpt2",
    } <= set(names)
    assert zoo.load_config("llama-3.1-8b").num_key_value_heads == 8
    assert zoo.load_config(str(zoo.CONFIGS_DIR / "gpt2" / "config.json")).n_embd == 768


def test_unknown_name_is_one_clear_line_listing_zoo():
    with pytest.raises(LabkitError) as err:
        zoo.load_model("llama-9000")
    msg = str(err.value)
    assert "\n" not in msg and "unknown model 'llama-9000'" in msg and "zoo-llama" in msg


def test_hub_id_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LabkitError) as err:
        zoo.load_model("Qwen/Qwen2.5-0.5B")
    assert "\n" not in str(err.value) and "hub id" in str(err.value) and "minilm" in str(err.value)


def test_hub_id_unreachable_is_one_clear_line(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(zoo, "hub_reachable", lambda: False)
    with pytest.raises(LabkitError, match="unreachable"):
        zoo.resolve("bigscience/bloom-560m")


def test_corrupted_weights_are_caught(tmp_path, monkeypatch):
    bad = tmp_path / "zoo-llama"
    bad.mkdir()
    prov = json.loads((zoo.MODELS_DIR / "zoo-llama" / "provenance.json").read_text())
    (bad / "provenance.json").write_text(json.dumps(prov))
    (bad / "model.safetensors").write_bytes(b"not the weights")
    monkeypatch.setattr(zoo, "MODELS_DIR", tmp_path)
    zoo.verify.cache_clear()
    try:
        with pytest.raises(LabkitError, match="sha256"):
            zoo.verify("zoo-llama")
    finally:
        zoo.verify.cache_clear()


def test_cli_zoo_lists_and_cli_errors_are_one_line():
    run = [sys.executable, "-m", "labkit"]
    ok = subprocess.run(run + ["zoo"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert ok.returncode == 0 and "sha256 ok" in ok.stdout
    bad = subprocess.run(run + ["frobnicate"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
