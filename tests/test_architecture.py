"""labkit.models.architecture: the module/parameter table from a config, formula and meta path, against
real models; LoRA target matching; trainable parameters."""

import pytest
import torch
from conftest import TINY_FAMILIES, tiny_config
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from labkit import LabkitError
from labkit.memory import estimator
from labkit.models import architecture, targets, zoo

ALL = zoo.catalog_names() + ["tiny-llama", "tiny-qwen2", "tiny-gpt2", "tiny-bloom"]
TINY = ["tiny-llama", "tiny-qwen2", "tiny-gpt2", "tiny-bloom"]


@pytest.mark.parametrize("name", ALL)
def test_parameter_count_and_shapes_equal_the_real_model(name):
    config = zoo.load_config(name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    real = dict(model.named_parameters())
    assert {k: tuple(v.shape) for k, v in real.items()} == architecture.param_shapes(config)
    assert architecture.count_parameters(config) == sum(p.numel() for p in model.parameters())


#: Every catalog config's published parameter total (docs/formulas.md section 1). BLOOM's model
#: cards give the exact count; Qwen2.5's round theirs to 0.49B and 7.61B.
PUBLISHED_COUNTS = {
    "llama-2-7b": 6_738_415_616,
    "llama-3.1-8b": 8_030_261_248,
    "mistral-7b": 7_241_732_096,
    "gpt2": 124_439_808,
    "bloom-560m": 559_214_592,
    "bloom-1b1": 1_065_314_304,
    "bloom-1b7": 1_722_408_960,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-7b": 7_615_616_512,
}


@pytest.mark.parametrize("name", zoo.catalog_names())
def test_parameter_counts_match_facts(name):
    assert name in PUBLISHED_COUNTS, f"{name}: add its published total here and to formulas.md"
    assert architecture.count_parameters(name) == PUBLISHED_COUNTS[name]


def test_default_lora_targets_are_peft_s():
    """targets="default" is peft's own per-model-type choice (GPT-2: c_attn, BLOOM: qkv)."""
    for model_type, names in targets.PEFT_DEFAULT_TARGETS.items():
        assert list(names) == targets.default_target_modules(model_type)
    assert targets.lora_parameters("gpt2", 8, "default") == targets.lora_parameters(
        "gpt2", 8, "c_attn"
    )
    bloom = estimator.training_memory("bloom-560m", method="lora", attention="eager")
    assert bloom.trainable_parameters == targets.lora_parameters("bloom-560m", 8, "query_key_value")


def test_lora_parameters_match_facts():
    assert targets.lora_parameters("llama-2-7b", 8, ["q_proj", "v_proj"]) == 4_194_304
    # GQA: v_proj's d_out is n_kv * d
    s = architecture.shape_of("llama-3.1-8b")
    per_layer = 8 * (4096 + 4096) + 8 * (4096 + 1024)
    assert targets.lora_parameters(s, 8, "q_proj,v_proj") == s.layers * per_layer
    assert targets.lora_parameters("gpt2", 4, "all-linear") > targets.lora_parameters(
        "gpt2", 4, "c_attn"
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"model_type": "t5", "vocab_size": 10},
        {
            "model_type": "llama",
            "hidden_size": 10,
            "num_attention_heads": 3,
            "num_hidden_layers": 1,
            "intermediate_size": 4,
            "vocab_size": 8,
        },
        {
            "model_type": "llama",
            "hidden_size": -8,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "intermediate_size": 4,
            "vocab_size": 8,
        },
    ],
)
def test_bad_configs_raise_one_line(bad):
    with pytest.raises(LabkitError) as err:
        architecture.shape_of(bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", TINY + zoo.catalog_names())
def test_module_table_from_formulas_equals_the_built_model(name):
    config = zoo.load_config(name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert architecture.module_table(config) == architecture.table_from_model(model)


def test_linear_layers_regex_and_default_targets():
    gpt2 = targets.linear_layers("tiny-gpt2")
    c_attn = next(m for m in gpt2 if m.name.endswith("h.0.attn.c_attn"))
    assert (c_attn.kind, c_attn.d_in, c_attn.d_out) == ("conv1d", 64, 192)
    assert gpt2[-1].name == "lm_head"
    assert targets.regex_matches("q_proj", "tiny-llama") == []  # a regex must match the whole name
    assert targets.regex_matches(r".*\.q_proj", "tiny-llama") == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
    ]
    model = zoo.load_model("tiny-llama")
    assert targets.regex_matches(r".*\.q_proj", model) == targets.regex_matches(
        r".*\.q_proj", "tiny-llama"
    )
    assert targets.default_target_modules("bloom") == ["query_key_value"]
    assert targets.default_target_modules("llama") == ["q_proj", "v_proj"]
    with pytest.raises(LabkitError, match="no default LoRA targets"):
        targets.default_target_modules("not-a-model")
    with pytest.raises(LabkitError, match="invalid regex"):
        targets.regex_matches("(", "tiny-llama")


def test_all_linear_excludes_the_output_head():
    names = [
        m.name for m in targets.lora_modules("tiny-bloom", LoraConfig(target_modules="all-linear"))
    ]
    assert "lm_head" not in names and len(names) == 2 * 4


#: Families without a formula (tiny configs in conftest): the meta path must count them exactly.
META_FAMILIES = ["mixtral", "gemma2", "phi3", "qwen3", "gpt_neox"]


@pytest.mark.parametrize("model_type", META_FAMILIES)
def test_meta_path_counts_equal_a_real_tiny_model(model_type):
    """Tied weights once, MoE experts all counted: equal to a real (CPU, random-init) model."""
    config = tiny_config(model_type)
    torch.manual_seed(0)
    real = AutoModelForCausalLM.from_config(config)
    shapes = {k: tuple(v.shape) for k, v in real.named_parameters()}
    assert architecture.param_shapes(config) == shapes
    assert architecture.count_parameters(config) == sum(p.numel() for p in real.parameters())
    # the dict form works too (built through AutoConfig.for_model)
    assert architecture.count_parameters(config.to_dict()) == sum(map(_numel, shapes.values()))


def test_meta_path_builds_each_config_once(monkeypatch):
    """The meta-device table is cached under the config's JSON (functools.lru_cache): an equal
    config, even a new object, is not built again, and each caller gets its own list."""
    built = []
    real = architecture.meta_model
    monkeypatch.setattr(architecture, "meta_model", lambda c: built.append(c) or real(c))
    config = dict(model_type="gpt_neox", **TINY_FAMILIES["gpt_neox"], rotary_pct=0.5)
    first = architecture.module_table(config)
    first.clear()  # a caller changing its list must not change the cached table
    again = architecture.module_table(dict(config))
    assert len(built) == 1 and again == architecture.table_from_model(real(config))
    assert architecture.module_table({**config, "rotary_pct": 0.75}) == again
    assert len(built) == 2


def _numel(shape):
    n = 1
    for x in shape:
        n *= x
    return n


@pytest.mark.parametrize("model_type", META_FAMILIES)
def test_meta_path_lora_and_frozen_trainable_equal_peft(model_type):
    """LoRA on the meta path uses peft's own matching: the count equals get_peft_model's."""
    config = tiny_config(model_type)
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULT

    # MoE: peft's all-linear also adapts the experts' fused parameters (target_parameters),
    # which this module does not model yet; the attention projections are matched
    first = ["q_proj", "v_proj"] if model_type == "mixtral" else "all-linear"
    both = model_type in DEFAULT and model_type != "mixtral"
    for wanted in (first, None) if both else (first,):
        lora = LoraConfig(r=4, target_modules=wanted)
        got = targets.trainable_shapes(config, "lora", r=4, targets=lora)
        with torch.device("meta"):
            model = get_peft_model(AutoModelForCausalLM.from_config(config), lora)
        assert sum(map(_numel, got.values())) == model.get_nb_trainable_parameters()[0]
    full = targets.trainable_shapes(config, "full")
    assert full == architecture.param_shapes(config)
    frozen = targets.trainable_shapes(config, "frozen", frozen_layers=1)
    assert not any(".layers.0." in n for n in frozen) and any(".layers.1." in n for n in frozen)


@pytest.mark.parametrize("name", TINY + ["llama-3.1-8b", "gpt2", "bloom-560m"])
def test_formula_equals_meta_path(name):
    """The five formula families: formula and meta path give the same table and counts."""
    config = zoo.load_config(name)
    meta = architecture.table_from_model(architecture.meta_model(config))
    assert architecture.module_table(config) == meta
    for wanted in ("default", "all-linear"):
        by_formula = targets.lora_modules(config, wanted)
        lora = LoraConfig(target_modules=None if wanted == "default" else wanted)
        by_peft = targets.lora_modules(config, lora)
        assert [m.name for m in by_formula] == [m.name for m in by_peft]


def test_trainable_shapes_are_what_memory_trains():
    s = architecture.shape_of("llama-2-7b")
    lora = targets.trainable_shapes(s, "lora", r=8, targets="q_proj,v_proj")
    assert (
        sum(map(_numel, lora.values()))
        == 4_194_304
        == targets.lora_parameters(s, 8, "q_proj,v_proj")
    )
    est = estimator.training_memory(s, method="lora", lora_targets="q_proj,v_proj")
    assert est.trainable_parameters == 4_194_304
    with pytest.raises(LabkitError, match="unknown method"):
        targets.trainable_shapes(s, "dora")


def test_unbuildable_config_is_one_line():
    with pytest.raises(LabkitError) as err:
        architecture.count_parameters({"model_type": "no-such-model"})
    assert "\n" not in str(err.value)
