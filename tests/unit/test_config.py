"""Presets and overrides: typed, strict, and every preset in configs/ loads."""

import dataclasses

import pytest

from newllm.config import CONFIG_DIR, ConfigError, ExperimentConfig, config_from_dict, load_config


@pytest.mark.parametrize("preset", sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))
def test_every_preset_loads_and_round_trips(preset):
    config = load_config(preset)
    assert config.preset == preset
    assert config_from_dict(config.to_dict()) == config


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("ablation/*.toml")), ids=lambda p: p.stem)
def test_every_ablation_config_loads_and_builds_its_new_llm(path):
    from newllm.models.new_llm import NewLLMConfig

    config = load_config(str(path))
    assert config.preset == f"ablation-{path.stem}"
    # the H200 ablations take the fast path; small_cpu*.toml ran eagerly on a CPU, as recorded in results.md
    assert (config.pretrain.epochs, config.pretrain.compile) == (4, not path.stem.startswith("small_cpu"))
    NewLLMConfig(vocab_size=64, **config.model.new_llm_arguments())  # the options reach a valid NewLLMConfig


def test_full_preset_is_the_prototype_schedule():
    config = load_config("full")
    assert (config.pretrain.epochs, config.pretrain.patience, config.finetune.epochs) == (100, 15, 50)
    assert config.model.names == ("new_llm", "tinygpt2", "lstm")


@pytest.mark.parametrize("variant", sorted(p.stem for p in CONFIG_DIR.glob("full_*.toml")))
def test_full_schedule_rows_differ_from_full_in_the_model_alone(variant):
    """docs/results.md compares these rows at one schedule: only [model], step 2's dropout and the preset name
    may differ."""
    base, row = load_config("full"), load_config(variant)
    finetune = dataclasses.replace(row.finetune, dropout=None)
    for section in ("data", "pretrain", "eval"):
        assert getattr(row, section) == getattr(base, section), section
    assert finetune == base.finetune
    assert row.model.names == base.model.names
    assert dataclasses.replace(row, preset="full", model=base.model, finetune=finetune) == base


def test_prototype_preset_is_the_prototype_protocol():
    config = load_config("prototype")
    assert (config.data.tokenizer, config.data.vocab_size, config.data.block_size) == ("prototype", 1000, 64)


def test_the_prototype_presets_earlier_name_seed_loads_the_same_preset(tmp_path):
    """Commands, scripts and results.json files in the wild name the prototype's preset "seed"."""
    from newllm.config import preset_path

    assert load_config("seed") == load_config("prototype")  # its name included: the present one
    assert preset_path("seed") == CONFIG_DIR / "prototype.toml"
    ablation = CONFIG_DIR / "ablation"
    assert load_config(str(ablation / "seed.toml")) == load_config(str(ablation / "prototype.toml"))
    (tmp_path / "prototype.toml").write_text("")  # a file of one's own is never swapped for another
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "seed.toml"))


def test_overrides_are_typed():
    config = load_config("quick", ["pretrain.lr=3e-4", "pretrain.epochs=7", "model.names=new_llm,lstm", "data.train_lines=none"])
    assert config.pretrain.lr == 3e-4 and config.pretrain.epochs == 7
    assert config.model.names == ("new_llm", "lstm")
    assert config.data.train_lines is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("pretrain.lrr=1", "unknown setting 'pretrain.lrr'"),
        ("pretrain.epochs=ten", "pretrain.epochs: expected an integer"),
        ("pretrain.epochs=1.5", "pretrain.epochs: expected an integer"),
        ("data=3", "data: expected a table"),
        ("no_equals_sign", "not of the form"),
        ("model.foo=1", "unknown setting 'model.foo'; valid here: block, candidate, "),
        ("model.new_llm=1", "unknown setting 'model.new_llm'"),  # where ModelConfig keeps the options: not a setting
        ("model.num_hidden_layers=2", "unknown setting 'model.num_hidden_layers'"),  # presets say num_layers
        ("model.vocab_size=64", "unknown setting 'model.vocab_size'"),  # the tokenizer's, not an option
        ("model.mlp_ratio=2.5", "model.mlp_ratio: expected an integer"),
        ("model.residual=maybe", "model.residual: expected true or false"),
    ],
)
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message) as raised:
        load_config("quick", [override])
    assert "\n" not in str(raised.value)


def test_unknown_key_in_a_toml_file_is_an_error(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("[pretrain]\nepochz = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'pretrain.epochz'"):
        load_config(str(path))


def test_unknown_model_key_in_a_toml_file_is_an_error(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("[model]\nhidden_size = 96\nhiden_size = 96\n")
    with pytest.raises(ConfigError, match="^unknown setting 'model.hiden_size'; valid here: .*hidden_size"):
        load_config(str(path))


def test_wrong_type_in_a_toml_file_is_an_error(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[model]\nhidden_size = "big"\n')
    with pytest.raises(ConfigError, match="model.hidden_size: expected an integer"):
        load_config(str(path))


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="known: .*quick"):
        load_config("nope")


def test_defaults_are_frozen():
    with pytest.raises(Exception):
        ExperimentConfig().pretrain.lr = 1.0


@pytest.mark.parametrize(
    "override, message",
    [
        ("pretrain.epochs=0", "pretrain.epochs: must be at least 1, got 0"),
        ("finetune.batch_size=0", "finetune.batch_size: must be at least 1, got 0"),
        ("pretrain.lr=nan", "pretrain.lr: must be a positive number, got nan"),
        ("pretrain.lr=-1", "pretrain.lr: must be a positive number, got -1.0"),
        ("finetune.on_nonfinite=bogus", "finetune.on_nonfinite: must be 'stop' or 'skip', got 'bogus'"),
        ("pretrain.stateful_rotate=true",
         "pretrain.stateful_rotate: rotates the lanes of stateful training; set stateful = true too"),
        ("pretrain.stateful_carry=false", "pretrain.stateful_carry: applies to stateful training; set stateful = true too"),
    ],
)
def test_training_settings_that_cannot_train_are_refused_by_name(override, message):
    with pytest.raises(ConfigError) as raised:
        load_config("quick", [override])
    assert str(raised.value) == message


@pytest.mark.parametrize(
    "override, message",
    [
        ("pretrain.weight_decay=-0.1", "pretrain.weight_decay: must be at least 0, got -0.1"),
        ("pretrain.warmup=1.5", "pretrain.warmup: must be in [0, 1) (a fraction of all steps), got 1.5"),
        ("pretrain.grad_clip=inf", "pretrain.grad_clip: must be at least 0 (0: no clipping), got inf"),
        ("finetune.seed=-1", "finetune.seed: must be in [0, 4294967296) (NumPy's seed range), got -1"),
        ("pretrain.max_steps=0", "pretrain.max_steps: must be -1 (no cap) or at least 1, got 0"),
        ("pretrain.save_steps=-5", "pretrain.save_steps: must be at least 0 (0: only at each epoch's end), got -5"),
        ("pretrain.scheduler=cosin", "pretrain.scheduler: must be 'linear', 'cosine', 'cosine_with_restarts', "
         "'polynomial', 'constant', 'constant_with_warmup' or 'inverse_sqrt', got 'cosin'"),
        ("model.dropout=1", "model.dropout: must be in [0, 1), got 1.0"),
        ("model.context_dropout=-0.5", "model.context_dropout: must be in [0, 1), got -0.5"),
        ("model.hidden_size=0", "model.hidden_size: must be at least 1, got 0"),
        ("model.cell=lstm", "model.cell: must be 'prototype' or 'parallel', got 'lstm'"),
        ("model.tolerance=0", "model.tolerance: must be in (0, 1), got 0.0"),
        ("model.context_scales=3", "model.context_scales: must divide context_size (64), got 3"),
        ("model.forget_bias=nan", "model.forget_bias: must be a finite number, got nan"),
        ("model.num_layers=0", "model.num_layers: must be at least 1, got 0"),  # named as presets name it
        ("model.block=conv", "model.block: must be 'linear' or 'mlp', got 'conv'"),
        ("model.candidate=relu", "model.candidate: must be 'linear' or 'tanh', got 'relu'"),
        ("model.mlp_ratio=0", "model.mlp_ratio: must be at least 1, got 0"),
        ("model.context_clamp=-1", "model.context_clamp: must be at least 0 (0: no clamp), got -1.0"),
        ("model.context_clamp=inf", "model.context_clamp: must be at least 0 (0: no clamp), got inf"),
        ("model.embedding_dropout=nan", "model.embedding_dropout: must be in [0, 1), got nan"),
        ("model.tie_embeddings=true", "model.tie_embeddings: needs embedding_size == hidden_size, got 64 and 128"),
        ("data.block_size=0", "data.block_size: must be at least 1, got 0"),
        ("data.train_lines=0", "data.train_lines: must be at least 1, got 0"),
        ("data.wikitext=v103", "data.wikitext: must be 'tokens' or 'raw', got 'v103'"),
        ("data.vocab_size=100", "data.vocab_size: a bpe tokenizer needs at least 260 (256 bytes + 4 special tokens), got 100"),
        ("eval.top_p=0", "eval.top_p: must be in (0, 1], got 0.0"),
        ("eval.temperature=0", "eval.temperature: must be a positive number, got 0.0"),
        ("eval.max_new_tokens=0", "eval.max_new_tokens: must be at least 1, got 0"),
        ("eval.stream_stride=600", "eval.stream_stride: must be less than stream_window (512), got 600"),
        ("eval.response_dialogues=-1", "eval.response_dialogues: must be at least 0 (0: no replies generated), got -1"),
        ("precision=fp16", "precision: must be 'auto', 'fp32' or 'bf16', got 'fp16'"),
    ],
)
def test_every_setting_with_a_range_is_refused_outside_it_by_name(override, message):
    with pytest.raises(ConfigError) as raised:
        load_config("quick", [override, "eval.stream_window=512"])
    assert str(raised.value) == message


def test_every_number_and_string_setting_has_a_limit_or_is_listed_as_free():
    """A new setting must say its range (or be declared free): validation cannot be forgotten."""
    import typing

    from newllm import config as module
    from newllm.evaluation.bench import BENCH_LIMITS, BenchConfig

    tables = {
        module.DataConfig: module.DATA_LIMITS,
        module.ModelConfig: module.MODEL_LIMITS,
        module.TrainConfig: module.TRAIN_LIMITS,
        module.EvalConfig: module.EVAL_LIMITS,
        module.ExperimentConfig: module.EXPERIMENT_LIMITS,
        BenchConfig: BENCH_LIMITS,
    }
    for cls, table in tables.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kinds = set(typing.get_args(hints[f.name])) or {hints[f.name]}
            if kinds & {int, float, str} and f.name not in module.FREE_FIELDS:
                assert f.name in table, f"{cls.__name__}.{f.name} has no entry in its limits table"
        assert set(table) <= {f.name for f in dataclasses.fields(cls)}, f"{cls.__name__}: a limit for no field"
        # the defaults themselves are within the limits
        module.check_limits(cls(), table)


def test_a_refusal_that_needs_two_settings_names_one_of_them():
    with pytest.raises(ConfigError) as raised:
        load_config("quick", ["model.block=mlp", "model.residual=true"])
    assert str(raised.value) == (
        "model.residual: residual and ffn_norm shape the linear block; the mlp block has both built in"
    )


def test_config_knows_the_fast_paths_and_the_trainers_schedulers():
    from transformers import SchedulerType

    from newllm.config import NEW_LLM_FAST_PATHS, SCHEDULERS
    from newllm.models.new_llm.modeling import FAST_PATHS

    assert set(NEW_LLM_FAST_PATHS) == set(FAST_PATHS) - {"eager"} | {"compiled+graphed/autograd"}
    assert set(SCHEDULERS) <= {s.value for s in SchedulerType}


def test_new_llm_options_are_new_llm_configs_arguments_and_defaults():
    """ModelConfig declares none of New-LLM's options: their names and defaults are NewLLMConfig.__init__'s (all but
    the vocabulary and the fixed arguments), `num_layers` standing for `num_hidden_layers`."""
    import inspect

    from newllm.config import ModelConfig
    from newllm.models.new_llm import NewLLMConfig
    from newllm.models.registry import BaselineShape

    parameters = inspect.signature(NewLLMConfig.__init__).parameters
    not_options = {"self", "kwargs", "vocab_size", "layer_norm_eps", "initializer_range", "use_cache"}
    expected = {name: parameters[name].default for name in parameters if name not in not_options}
    model = ModelConfig()
    assert model.new_llm == () and model.new_llm_arguments() == {}  # nothing given: NewLLMConfig's defaults
    assert model.new_llm_arguments(defaults=True) == expected
    options = model.new_llm_options()
    assert options == {("num_layers" if k == "num_hidden_layers" else k): v for k, v in expected.items()}
    assert not set(options) & {f.name for f in dataclasses.fields(ModelConfig)}  # not repeated as fields
    assert set(model.baseline_shape()) == {f.name for f in dataclasses.fields(BaselineShape)}
    assert model.baseline_shape()["dropout"] == parameters["dropout"].default
    config = load_config("quick", ["model.dropout=0.3", "model.num_layers=4"])
    assert config.model.baseline_shape()["dropout"] == 0.3
    assert config.model.new_llm_arguments()["num_hidden_layers"] == 4
    built = NewLLMConfig(**config.model.new_llm_arguments())
    for name, value in config.model.new_llm_options().items():  # what the config reads is what NewLLMConfig holds
        assert getattr(built, name) == value, name


def test_an_argument_added_to_new_llm_config_is_a_setting_with_nothing_else_to_edit(monkeypatch):
    """The recipe of docs/architecture.md: a new NewLLMConfig argument (here a subclass's) is read, typed, checked,
    recorded and handed over without an edit to config.py."""
    from newllm.models.new_llm import configuration

    class WithGateScale(configuration.NewLLMConfig):
        def __init__(self, gate_scale: float = 1.5, **kwargs):
            if not gate_scale > 0:
                raise configuration.OptionError("gate_scale", f"must be a positive number, got {gate_scale!r}")
            self.gate_scale = gate_scale
            super().__init__(**kwargs)

    monkeypatch.setattr(configuration, "NewLLMConfig", WithGateScale)
    assert load_config("quick").model.new_llm_options()["gate_scale"] == 1.5  # its default
    config = load_config("quick", ["model.gate_scale=2"])
    assert config.model.new_llm_options()["gate_scale"] == 2.0 and isinstance(
        config.model.new_llm_options()["gate_scale"], float)  # fmt: skip
    assert config.model.new_llm_arguments()["gate_scale"] == 2.0
    assert config.to_dict()["model"]["gate_scale"] == 2.0
    assert config_from_dict(config.to_dict()) == config
    assert load_config("quick", ["model.gate_scale=1.5"]) == load_config("quick")  # its default, like any other
    with pytest.raises(ConfigError) as raised:
        load_config("quick", ["model.gate_scale=0"])
    assert str(raised.value) == "model.gate_scale: must be a positive number, got 0.0"
    with pytest.raises(ConfigError, match="^model.gate_scale: expected a number, got 'wide'$"):
        load_config("quick", ["model.gate_scale=wide"])


def test_a_refusal_of_another_kind_still_names_a_setting(monkeypatch):
    """A check written as a plain ValueError is one line naming the option it mentions."""
    from newllm.models.new_llm import configuration

    class Strict(configuration.NewLLMConfig):
        def __init__(self, **kwargs):
            if kwargs.get("hidden_size", 512) % 8:
                raise ValueError("hidden_size must be a multiple of 8\nfor the kernels")
            super().__init__(**kwargs)

    monkeypatch.setattr(configuration, "NewLLMConfig", Strict)
    with pytest.raises(ConfigError) as raised:
        load_config("quick", ["model.dropout=0.2", "model.hidden_size=100"])
    assert str(raised.value) == "model.hidden_size: hidden_size must be a multiple of 8 for the kernels"


# configs/quick.toml's [model] as experiment.json and results.json have recorded it, key for key and in this order
QUICK_MODEL = {
    "names": ["new_llm", "tinygpt2", "lstm"], "embedding_size": 64, "context_size": 64, "hidden_size": 128,
    "num_layers": 2, "dropout": 0.1, "cell": "prototype", "embedding_dropout": 0.0, "context_dropout": 0.0,
    "residual": False, "ffn_norm": False, "tie_embeddings": False, "forget_bias": 0.0, "input_bias": 0.0,
    "context_scales": 1, "block": "linear", "mlp_ratio": 4, "final_norm": False, "candidate": "linear",
    "context_clamp": 10.0, "gpt2_layers": 4, "gpt2_positions": 256, "lstm_layers": 2, "mamba2_layers": 6,
    "tolerance": 0.05,
}  # fmt: skip


def test_the_model_section_is_recorded_flat_as_before():
    """experiment.json, results.json, the resume check and changed_settings read `model.<option>`: the layout stays
    (an option added to NewLLMConfig since may only add a key)."""
    import json

    from newllm.models.new_llm import NewLLMConfig
    from newllm.pipeline.setup import _flat

    config = load_config("quick")
    recorded = json.loads(config.to_json())["model"]
    assert [key for key in recorded if key in QUICK_MODEL] == list(QUICK_MODEL)
    assert {key: recorded[key] for key in QUICK_MODEL} == QUICK_MODEL
    assert set(recorded) - set(QUICK_MODEL) <= set(NewLLMConfig.options())
    flat = _flat(config.to_dict())
    assert (flat["model.hidden_size"], flat["model.num_layers"], flat["model.cell"]) == (128, 2, "prototype")
    assert not any(key.startswith("model.new_llm") for key in flat)
    # a config recorded in this layout reads back as the same config
    assert config_from_dict(json.loads(config.to_json()) | {"model": dict(QUICK_MODEL)}) == config


@pytest.mark.parametrize(
    "names, message",
    [
        ("", "model.names: no model given; choose one or more of new_llm, tinygpt2, lstm, mamba2"),
        (",", "model.names: no model given; choose one or more of new_llm, tinygpt2, lstm, mamba2"),
        ("new_llm,gpt", "model.names: unknown model 'gpt'; choose from new_llm, tinygpt2, lstm, mamba2"),
        ("lstm,new_llm,lstm", "model.names: lstm is listed twice"),
    ],
)
def test_model_names_are_checked_when_the_config_is_built(names, message):
    with pytest.raises(ConfigError) as raised:
        load_config("quick", [f"model.names={names}"])
    assert str(raised.value) == message


def test_config_knows_the_model_names_of_the_registry():
    from newllm import config
    from newllm.models import registry

    assert config.MODEL_NAMES == registry.MODEL_NAMES
    assert config.DEFAULT_MODEL_NAMES == registry.DEFAULT_MODEL_NAMES == config.ModelConfig().names


def test_the_study_preset_builds_its_mlp_cell_and_baselines_of_its_size(tiny_tokenizer):
    """configs/study.toml's [model] reaches NewLLMConfig field for field; the baselines are sized to it."""
    from newllm.models.registry import parameter_count
    from newllm.pipeline import model_configs

    config = load_config("study", ["data.vocab_size=512"])
    configs = model_configs(config, tiny_tokenizer)
    cell = configs["new_llm"]
    m = config.model.new_llm_options()
    assert (cell.block, cell.mlp_ratio, cell.final_norm, cell.candidate, cell.context_clamp, cell.forget_bias) == (
        "mlp", 4, True, "tanh", 0.0, 1.0)  # fmt: skip
    assert (cell.embedding_size, cell.context_size, cell.hidden_size, cell.tie_embeddings) == (384, 384, 384, True)
    assert (cell.dropout, cell.embedding_dropout) == (m["dropout"], m["embedding_dropout"])
    target = parameter_count("new_llm", cell)
    for name in ("tinygpt2", "lstm"):
        assert abs(parameter_count(name, configs[name]) - target) <= 0.05 * target
    assert (config.pretrain.weight_decay, config.pretrain.epochs) == (0.1, 16)


def test_the_prototypes_earlier_name_seed_still_reads_as_prototype(tiny_corpus_lines):
    """Checkpoints, configs and commands in the wild say "seed" for the prototype's cell and tokenizer."""
    from newllm.data.tokenizer import describe_tokenizer, train_tokenizer
    from newllm.models.new_llm import NewLLMConfig

    config = load_config("quick", ["model.cell=seed", "data.tokenizer=seed"])
    assert (config.model.new_llm_options()["cell"], config.data.tokenizer) == ("prototype", "prototype")
    assert config.to_dict()["model"]["cell"] == "prototype"
    assert config == load_config("quick", ["model.cell=prototype", "data.tokenizer=prototype"])
    assert config_from_dict(config.to_dict()) == config
    recorded = config.to_dict()
    recorded["model"]["cell"] = "seed"  # an experiment.json written before the rename
    assert config_from_dict(recorded) == config
    assert NewLLMConfig(cell="seed").cell == "prototype"
    assert describe_tokenizer(train_tokenizer(tiny_corpus_lines, kind="seed", vocab_size=100))["kind"] == "prototype"


def test_a_preset_with_a_base_holds_only_what_it_changes(tmp_path):
    (tmp_path / "parent.toml").write_text('[model]\ndropout = 0.3\nhidden_size = 96\n[pretrain]\nepochs = 7\n')
    (tmp_path / "child.toml").write_text(f'base = "{tmp_path / "parent.toml"}"\n[model]\ndropout = 0.1\n')
    child = load_config(str(tmp_path / "child.toml"))
    options = child.model.new_llm_options()
    assert (options["dropout"], options["hidden_size"], child.pretrain.epochs) == (0.1, 96, 7)
    assert child.preset == "child"  # the base's name is not inherited


def test_base_presets_that_form_a_cycle_or_are_not_names_are_refused(tmp_path):
    (tmp_path / "a.toml").write_text(f'base = "{tmp_path / "b.toml"}"\n')
    (tmp_path / "b.toml").write_text(f'base = "{tmp_path / "a.toml"}"\n')
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(tmp_path / "a.toml"))
    (tmp_path / "c.toml").write_text("base = 3\n")
    with pytest.raises(ConfigError, match="base must be"):
        load_config(str(tmp_path / "c.toml"))


@pytest.mark.parametrize("family", ["new_llm", "tinygpt2", "lstm"])
def test_each_study_preset_is_its_familys_chosen_grid_point(family):
    """configs/study_<family>.toml is configs/study.toml with the grid point that won on validation, and step 2
    keeps step 1's weight decay; nothing else differs."""
    import json

    summary = json.loads((CONFIG_DIR.parent / "docs" / "results" / "study_grid_h200.json").read_text())
    chosen = next(p for p in summary["points"] if p["name"] == summary["chosen"][family])
    assert chosen["val_loss"] == min(p["val_loss"] for p in summary["points"] if p["family"] == family)
    overrides = [f"{key}={value}" for key, value in chosen["settings"].items()]
    overrides.append(f"finetune.weight_decay={chosen['settings']['pretrain.weight_decay']}")
    expected = dataclasses.replace(load_config("study", overrides), preset=f"study_{family}")
    assert load_config(f"study_{family}") == expected


ABLATIONS = {  # configs/study_without_<lever>.toml: the settings in which it differs from the chosen cell
    # the two levers that change the size also change the width, back to the chosen cell's budget
    "mlp_blocks": {"model.block": "linear", **{f"model.{k}_size": 600 for k in ("embedding", "context", "hidden")}},
    "final_norm": {"model.final_norm": False},
    "tied_head": {"model.tie_embeddings": False, **{f"model.{k}_size": 296 for k in ("embedding", "context", "hidden")}},
    # the one pair: each alone keeps the cell at chance on MQAR, together they make it recall (docs/recall.md)
    "final_norm_and_tied_head": {"model.final_norm": False, "model.tie_embeddings": False,
                                 **{f"model.{k}_size": 296 for k in ("embedding", "context", "hidden")}},
    "tanh": {"model.candidate": "linear", "model.context_clamp": 10.0},
    "forget_bias": {"model.forget_bias": 0.0},
    "weight_decay": {"pretrain.weight_decay": 0.0, "finetune.weight_decay": 0.0},
    "dropout": {"model.dropout": 0.0, "model.embedding_dropout": 0.0},
}


def test_the_study_ablations_are_exactly_the_ones_declared():
    assert {p.stem.removeprefix("study_without_") for p in CONFIG_DIR.glob("study_without_*.toml")} == set(ABLATIONS)


@pytest.mark.parametrize("lever", sorted(ABLATIONS))
def test_each_study_ablation_removes_one_lever_and_builds(lever, tiny_tokenizer):
    from newllm.pipeline import model_configs

    changes = ABLATIONS[lever]
    expected = load_config("study_new_llm", [f"{k}={v}" for k, v in changes.items()])
    ablation = load_config(f"study_without_{lever}")
    assert ablation == dataclasses.replace(expected, preset=f"study_without_{lever}")
    assert ablation != dataclasses.replace(load_config("study_new_llm"), preset=ablation.preset)
    model_configs(dataclasses.replace(ablation, data=dataclasses.replace(ablation.data, vocab_size=512)), tiny_tokenizer)


def test_each_study_ablation_keeps_the_chosen_cells_parameter_budget():
    """An ablation compares levers, not sizes: every one within ±5 % of the chosen cell's parameters."""
    from newllm.models import NewLLMConfig
    from newllm.models.registry import parameter_count

    def count(preset):
        c = load_config(preset)
        return parameter_count("new_llm", NewLLMConfig(vocab_size=c.data.vocab_size, **c.model.new_llm_arguments()))

    chosen = count("study_new_llm")
    assert chosen == 7_441_280
    for lever in ABLATIONS:
        assert abs(count(f"study_without_{lever}") - chosen) <= 0.05 * chosen, lever


def test_provenance_names_the_settings_changed_from_the_preset():
    from newllm.pipeline.setup import changed_settings, provenance

    config = load_config("quick", ["pretrain.lr=0.5", "model.dropout=0.3"])
    assert changed_settings(config) == {"pretrain.lr": 0.5, "model.dropout": 0.3}
    assert changed_settings(load_config("quick")) == {}
    record = provenance(config, "cpu", {"torch": "x", "cpu": "some cpu"})
    assert (record["preset"], record["seeds"]["pretrain"], record["device"]) == ("quick", config.pretrain.seed, "some cpu")
    assert record["config_file"].endswith("quick.toml")


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU", ""])
def test_a_device_name_is_checked_when_the_config_is_built(device):
    with pytest.raises(ConfigError, match=f"device: unknown device {device!r}: use auto, cpu, cuda or cuda:N"):
        load_config("quick", [f"device={device}"])
    assert load_config("quick", ["device=cuda:1"]).device == "cuda:1"  # whether it exists is the step's check


def test_grouping_by_length_and_stateful_lanes_are_refused_together():
    assert load_config("quick", ["finetune.group_by_length=true"]).finetune.group_by_length is True
    with pytest.raises(ConfigError, match="pretrain.group_by_length: stateful training reads its lanes in order"):
        load_config("quick", ["pretrain.stateful=true", "pretrain.group_by_length=true"])


def test_the_center_norm_study_is_the_best_cell_with_its_final_norm_centring_alone():
    expected = load_config("study_without_tanh", ["model.final_norm_type=center"])
    assert load_config("study_center_norm") == dataclasses.replace(expected, preset="study_center_norm")
    assert load_config("study_center_norm") != dataclasses.replace(load_config("study_without_tanh"), preset="study_center_norm")
