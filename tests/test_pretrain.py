import json

from labkit.course import build_zoo


def test_build_is_deterministic_and_records_provenance(tmp_path):
    kwargs = {"steps": 3, "batch": 2, "threads": 1, "log_every": 0, "max_texts": 60}
    a = build_zoo.build(tmp_path / "a", **kwargs)
    b = build_zoo.build(tmp_path / "b", **kwargs)
    assert a["sha256"] == b["sha256"]
    saved = json.loads((tmp_path / "a" / "provenance.json").read_text())
    for key in ("seed", "steps", "tokens_seen", "final_train_loss", "heldout_loss", "sha256"):
        assert key in saved
    assert saved["tokens_seen"] == 3 * 2 * build_zoo.CONTEXT


def test_tokenizer_round_trips_corpus_text():
    from labkit.models import zoo

    tok = zoo.load_tokenizer("zoo-llama")
    text = 'Mia asked, "Where does the fox live?" Tom said, "The fox lives in the forest."'
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text


def test_cli_refuses_to_overwrite_without_force(tmp_path):
    import pytest

    from labkit import LabkitError

    (tmp_path / "model.safetensors").write_bytes(b"learner's model")
    for force in ([], ["--force"]):  # not a folder build-zoo wrote: --force does not help
        with pytest.raises(LabkitError, match="replaces only a model folder it wrote"):
            build_zoo.cli_main(["--out", str(tmp_path), *force])
    assert (tmp_path / "model.safetensors").read_bytes() == b"learner's model"
    (tmp_path / "provenance.json").write_text("{}")  # the course's own folder: needs --force
    with pytest.raises(LabkitError, match="already holds a model; pass --force"):
        build_zoo.cli_main(["--out", str(tmp_path)])


def _old_model(folder):
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"learner's model")
    (folder / "provenance.json").write_text("{}")
    return {f.name: f.read_bytes() for f in folder.iterdir()}


def _siblings(folder):
    return sorted(p.name for p in folder.parent.iterdir())


def test_interrupted_rebuild_keeps_the_old_model_and_leaves_no_temporary_folder(
    tmp_path, monkeypatch
):
    import pytest
    import torch

    out = tmp_path / "zoo-llama"
    before = _old_model(out)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C in the middle of a training step

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", interrupt)
    with pytest.raises(KeyboardInterrupt):
        build_zoo.build_into(
            out, force=True, steps=3, batch=2, threads=1, log_every=0, max_texts=60
        )
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert _siblings(out) == ["zoo-llama"]


def test_failed_rebuild_through_the_cli_keeps_the_old_model(tmp_path, monkeypatch, capsys):
    out = tmp_path / "zoo-llama"
    before = _old_model(out)

    def half_written(folder, **kwargs):
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(build_zoo, "build", half_written)
    assert build_zoo.cli_main(["--out", str(out), "--force"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted; the model there was kept" in err[0]
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before

    def crash(folder, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(build_zoo, "build", crash)
    import pytest

    with pytest.raises(RuntimeError):
        build_zoo.cli_main(["--out", str(out), "--force"])
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert _siblings(out) == ["zoo-llama"]


def test_successful_rebuild_swaps_in_the_new_model(tmp_path, monkeypatch):
    out = tmp_path / "zoo-llama"
    _old_model(out)

    def new_model(folder, **kwargs):
        (folder / "model.safetensors").write_bytes(b"new")
        return {"parameters": 1}

    monkeypatch.setattr(build_zoo, "build", new_model)
    assert build_zoo.build_into(out, force=True) == {"parameters": 1}
    assert [f.name for f in out.iterdir()] == ["model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == b"new"
    assert _siblings(out) == ["zoo-llama"]
