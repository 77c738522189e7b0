"""The paper's presets (configs/paper/): they load, name only built-in benchmarks, and carry the paper's
settings; per-model training overrides and prompt templates reach each pair's training and evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from alphasweep.config import ConfigError, load_config, parse_config
from alphasweep.evaluation.benchmarks import BUILTIN_BENCHMARKS, resolve_spec
from alphasweep.objectives import parse_objective
from alphasweep.orchestrator.space import point_of

PRESETS = Path(__file__).resolve().parents[1] / "configs" / "paper"
PAPER_POINTS = ["original", "p", "GeneralFamily-0.1", "GeneralFamily-0.5", "GeneralFamily-2", "GeneralFamily-10",
                "OnlyTopLogP-0.2"]
EXPECTED = {  # domain: (models by hub id, data, benchmarks, max_length)
    "math": (["Qwen/Qwen2.5-Math-1.5B", "Qwen/Qwen2.5-Math-7B", "deepseek-ai/deepseek-math-7b-base",
              "meta-llama/Llama-3.1-8B"], "gaotang/numina-cot-subset-67k",
             ["math500", "minerva_math", "olympiadbench", "aime24", "amc23"], 3072),
    "medical": (["Qwen/Qwen2.5-1.5B", "meta-llama/Llama-3.2-3B", "meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-Math-7B"],
                "gaotang/medical_sft_processed", ["medmcqa", "medqa", "pubmedqa", "mmlu_pro_medical"], 800),
    "figfont": (["Qwen/Qwen2.5-1.5B", "Qwen/Qwen2.5-7B", "meta-llama/Llama-3.2-3B", "meta-llama/Llama-3.1-8B"],
                "gaotang/figlet_font", ["figfont"], 800),
}


@pytest.mark.parametrize("domain", list(EXPECTED))
def test_preset_loads_with_the_papers_settings(domain):
    cfg = load_config(PRESETS / f"{domain}.yaml")
    models, data, benchmarks, max_length = EXPECTED[domain]
    assert [m.path for m in cfg.models] == models
    assert [d.name for d in cfg.domains] == [domain] and cfg.domains[0].train.path == data
    assert cfg.search.families == ["nll", "p", "general", "top_logp"] and cfg.search.enqueue == PAPER_POINTS
    for name in cfg.search.enqueue:  # each enqueued point lies in the searched space
        point, obj = point_of(name, cfg.search), parse_objective(name)
        assert obj.family in cfg.search.families and point["family"] == obj.family
        if obj.family == "general":
            assert cfg.search.alpha.low <= point["alpha"] <= cfg.search.alpha.high
        if obj.threshold is not None:
            assert cfg.search.threshold.low <= obj.threshold <= cfg.search.threshold.high
    for model, dom in cfg.pairs():
        train = cfg.train_for(dom, model)
        assert (train.epochs, train.batch_size) == (1, 256)
        assert train.weight_decay == (1e-5 if domain == "figfont" else 0.01)  # the figfont script's own value
        assert (train.warmup_ratio, train.min_lr_ratio, train.grad_clip) == (0.1, 0.0, 1.0)
        assert train.max_length == max_length
        assert train.loss_normalization == "per_micro_batch"
        assert (train.strategy, train.bf16, train.gpus_per_worker) == ("fsdp", True, 1)
        assert train.learning_rate == (2e-5 if model.path == "meta-llama/Llama-3.1-8B" else 5e-5)
        assert train.batch_size % (train.workers * train.micro_batch_size) == 0
        data_spec = cfg.data_for(model, dom)
        assert data_spec.prompt_template == model.prompt_template and "{prompt}" in model.prompt_template
        assert "<|begin_of_text|>" not in model.prompt_template  # the tokenizer adds the BOS
        specs = [resolve_spec(b) for b in cfg.benchmarks_for(model, dom)]
        assert [b.name for b in specs] == benchmarks and all(b.name in BUILTIN_BENCHMARKS for b in specs)
        assert all(b.prompt_template == model.prompt_template for b in specs)


def test_preset_evaluation_is_the_papers():
    math, medical, figfont = (load_config(PRESETS / f"{d}.yaml").eval for d in EXPECTED)
    assert (math.n_samples, math.temperature, math.top_p, math.max_new_tokens) == (16, 1.0, 1.0, 4096)
    assert (medical.n_samples, medical.temperature) == (1, 0.0)
    assert (figfont.n_samples, figfont.temperature, figfont.max_new_tokens) == (1, 0.0, 5)
    assert load_config(PRESETS / "figfont.yaml").domains[0].benchmarks[0].metric == "exact_match"


def _raw(**over) -> dict:
    raw = {"name": "t", "output_dir": "/tmp/t",
           "models": [{"name": "a", "path": "/m/a"}, {"name": "b", "path": "/m/b", "prompt_template": "<{prompt}>",
                                                     "train_overrides": {"learning_rate": 2e-5, "max_length": 64}}],
           "domains": [{"name": "d", "train": {"path": "/d.jsonl"}, "benchmarks": [{"name": "gsm8k"}],
                        "train_overrides": {"learning_rate": 1e-3, "max_length": 32, "batch_size": 8}}],
           "train": {"learning_rate": 5e-4}}
    raw.update(over)
    return raw


def test_model_overrides_apply_after_the_domains_and_templates_reach_data_and_benchmarks():
    cfg = parse_config(_raw())
    (a, d), (b, _) = cfg.pairs()
    assert (cfg.train_for(d, a).learning_rate, cfg.train_for(d, a).max_length) == (1e-3, 32)
    assert (cfg.train_for(d, b).learning_rate, cfg.train_for(d, b).max_length, cfg.train_for(d, b).batch_size) == (
        2e-5, 64, 8)
    assert cfg.train_for(d).learning_rate == 1e-3  # the domain alone, as before
    assert cfg.data_for(a, d).prompt_template is None and cfg.data_for(b, d).prompt_template == "<{prompt}>"
    assert cfg.benchmarks_for(b, d)[0].prompt_template == "<{prompt}>" and cfg.domains[0].train.prompt_template is None
    own = parse_config(_raw(domains=[{"name": "d", "train": {"path": "/d.jsonl", "prompt_template": "[{prompt}]"},
                                      "benchmarks": [{"name": "gsm8k", "prompt_template": "({prompt})"}]}]))
    b_own = own.models[1]
    assert own.data_for(b_own, own.domains[0]).prompt_template == "[{prompt}]"  # the data's own wins
    assert own.benchmarks_for(b_own, own.domains[0])[0].prompt_template == "({prompt})"


@pytest.mark.parametrize("model, parts", [
    ({"name": "b", "path": "/m/b", "train_overrides": {"learning_rate": -1}},
     ["models.1.train_overrides.learning_rate: Input should be greater than 0 (with domain 'd')"]),
    ({"name": "b", "path": "/m/b", "train_overrides": {"lr": 1e-5}},
     ["models.1.train_overrides.lr: Extra inputs are not permitted"]),
    ({"name": "b", "path": "/m/b", "prompt_template": "no placeholder"},
     ["t.yaml: models.1.prompt_template: must contain {prompt}"]),
    ({"name": "b", "path": "/m/b", "prompt_template": "\\boxed{} {prompt}"},
     ["t.yaml: models.1.prompt_template: not a format string over {prompt} alone", "write literal braces as {{"]),
])
def test_bad_model_settings_name_the_field(model, parts):
    raw = _raw()
    raw["models"][1] = model
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "t.yaml")
    assert all(part in str(err.value) for part in parts), str(err.value)


def test_preset_yaml_anchors_share_one_template_per_model_family():
    raw = yaml.safe_load((PRESETS / "medical.yaml").read_text())
    by_name = {m["name"]: m["prompt_template"] for m in raw["models"]}
    assert by_name["qwen2.5-1.5b"] == by_name["qwen2.5-math-7b"] != by_name["llama-3.2-3b"] == by_name["llama-3.1-8b"]
