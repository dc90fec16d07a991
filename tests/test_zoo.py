import json
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from labkit import REPO_ROOT, LabkitError, files
from labkit.models import zoo


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
    from labkit.data import loaders
    from labkit.training.lm_loss import blocks_loss, pack

    prov = json.loads((zoo.MODELS_DIR / "zoo-llama" / "provenance.json").read_text())
    model, tok = zoo.load_model("zoo-llama"), zoo.load_tokenizer("zoo-llama")
    blocks = pack(tok, loaders.load_corpus("validation"))
    assert blocks.numel() == prov["corpus_tokens"]["validation"]
    assert blocks_loss(model, blocks[:32]) == pytest.approx(prov["heldout_loss"], abs=0.1)


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


@pytest.fixture
def zoo_copy(tmp_path, monkeypatch):
    """A private copy of data/models/zoo-llama that a test may damage."""
    copy = tmp_path / "models"
    shutil.copytree(zoo.MODELS_DIR / "zoo-llama", copy / "zoo-llama")
    monkeypatch.setattr(zoo, "MODELS_DIR", copy)
    return copy / "zoo-llama"


def _flip(path, offset=4000, n=64):
    data = bytearray(path.read_bytes())
    data[offset : offset + n] = bytes(255 - b for b in data[offset : offset + n])
    path.write_bytes(bytes(data))


def test_corrupted_zoo_weights_are_refused_with_how_to_restore(zoo_copy):
    _flip(zoo_copy / "model.safetensors")
    for call in (lambda: zoo.verify("zoo-llama"), lambda: zoo.load_model("zoo-llama")):
        with pytest.raises(LabkitError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and "sha256" in msg and "git checkout data/models/zoo-llama" in msg


def test_zoo_with_missing_weights_or_provenance_is_an_error_not_a_random_model(zoo_copy):
    (zoo_copy / "model.safetensors").unlink()
    with pytest.raises(LabkitError, match="model.safetensors is missing; restore it"):
        zoo.load_model("zoo-llama")
    (zoo_copy / "provenance.json").write_text('{"sha256": ')
    with pytest.raises(LabkitError, match="provenance.json is damaged"):
        zoo.load_model("zoo-llama")
    shutil.rmtree(zoo_copy)
    with pytest.raises(LabkitError, match="config.json is missing; restore it with: git checkout"):
        zoo.load_tokenizer("zoo-llama")


def test_damaged_zoo_tokenizer_is_caught_by_its_checksum(zoo_copy):
    (zoo_copy / "tokenizer.json").write_text("not json")
    with pytest.raises(LabkitError, match="tokenizer.json has sha256"):
        zoo.load_tokenizer("zoo-llama")


def test_each_zoo_file_is_hashed_once_per_process_until_it_changes(zoo_copy, monkeypatch):
    calls = []
    real = files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda p: calls.append(p) or real(p))
    zoo.verify("zoo-llama")
    first = len(calls)
    zoo.verify("zoo-llama")
    zoo.resolve("zoo-llama")
    assert first == 3 and len(calls) == first  # weights, tokenizer, config; then cached
    _flip(zoo_copy / "model.safetensors")
    with pytest.raises(LabkitError, match="sha256"):
        zoo.verify("zoo-llama")
    assert len(calls) == first + 1  # the changed file (new mtime) is hashed again


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_sharded_checkpoint_loads_its_real_weights(tmp_path):
    original = zoo.load_model("tiny-llama", seed=5)
    original.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    assert _same_weights(zoo.load_model(tmp_path), original)
    assert not _same_weights(zoo.load_model("tiny-llama", seed=6), original)


def test_pytorch_bin_checkpoint_loads_its_real_weights(tmp_path):
    original = zoo.load_model("tiny-gpt2", seed=5)
    original.config.save_pretrained(tmp_path)
    torch.save(original.state_dict(), tmp_path / "pytorch_model.bin")
    assert _same_weights(zoo.load_model(tmp_path), original)


def test_config_without_weights_is_an_error_unless_random_init_is_asked_for(tmp_path):
    zoo.load_config("tiny-llama").save_pretrained(tmp_path)
    with pytest.raises(LabkitError, match="has a config but no weights.*random_init=True"):
        zoo.load_model(tmp_path)
    with pytest.raises(LabkitError, match="catalog config .* random_init=True"):
        zoo.load_model("gpt2")
    a = zoo.load_model(tmp_path, random_init=True, seed=1)
    assert _same_weights(a, zoo.load_model("tiny-llama", seed=1))  # tiny-* ask for it by name
    assert zoo.RANDOM_INIT == {"tiny-llama", "tiny-qwen2", "tiny-gpt2", "tiny-bloom"}


def test_config_file_is_read_as_given_never_a_sibling(tmp_path):
    (tmp_path / "config.json").write_text((zoo.CONFIGS_DIR / "gpt2" / "config.json").read_text())
    llama = tmp_path / "mymodel.txt"
    llama.write_text((zoo.CONFIGS_DIR / "llama-3.1-8b" / "config.json").read_text())
    assert zoo.load_config(llama).model_type == "llama"
    assert zoo.load_config(tmp_path).model_type == "gpt2"


def test_cli_zoo_lists_and_cli_errors_are_one_line():
    run = [sys.executable, "-m", "labkit"]
    ok = subprocess.run(run + ["zoo"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert ok.returncode == 0 and "sha256 ok" in ok.stdout
    bad = subprocess.run(
        run + ["frobnicate"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_loads_that_keep_every_real_weight_still_pass(tmp_path):
    """The load checks refuse random or dropped tensors only: a tensor of no module is left out
    (as transformers does), a new task head is the one random part, integer buffers are fine."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(zoo.MODELS_DIR / "zoo-llama", tmp_path / "m")
    (tmp_path / "m" / "provenance.json").unlink()  # the weights change below
    sd = load_file(tmp_path / "m" / "model.safetensors")
    save_file({**sd, "evil.weight": torch.zeros(3)}, tmp_path / "m" / "model.safetensors")
    assert _same_weights(zoo.load_model(tmp_path / "m"), zoo.load_model("zoo-llama"))
    cls = zoo.load_model("zoo-llama", task="sequence-classification", num_labels=3)
    assert cls.score.weight.shape == (3, 192)
    assert type(zoo.load_model("zoo-llama", task="base")).__name__ == "LlamaModel"
    assert zoo.load_model("minilm", task="base").embeddings.position_ids.dtype == torch.int64


def test_a_copy_with_its_provenance_is_checked_wherever_it_lives(tmp_path):
    shutil.copytree(zoo.MODELS_DIR / "zoo-llama", tmp_path / "copy")
    assert _same_weights(zoo.load_model(tmp_path / "copy"), zoo.load_model("zoo-llama"))
    _flip(tmp_path / "copy" / "model.safetensors")
    for call in (zoo.load_model, zoo.load_tokenizer, zoo.load_config):
        with pytest.raises(LabkitError, match="model.safetensors has sha256.*build-zoo --out"):
            call(str(tmp_path / "copy"))
