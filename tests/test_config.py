"""Configuration: the defaults reproduce the literature, every group option composes, typos fail at
start-up, and each bad value is refused with one line naming the field and what is allowed."""

import pytest
from hydra.errors import ConfigCompositionException

from grok.config import validate
from grok.errors import ConfigError
from tests.conftest import make_config


def test_defaults_reproduce_the_literature_setting():
    cfg = make_config()
    assert (cfg.task.name, cfg.task.p, cfg.train_frac) == ("add", 97, 0.3)
    assert cfg.model.name == "transformer"
    assert (cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads, cfg.model.d_mlp) == (1, 128, 4, 512)
    assert (cfg.model.act, cfg.model.layer_norm) == ("relu", False)
    opt = cfg.optimizer
    assert (opt.name, opt.lr, opt.weight_decay, list(opt.betas), opt.warmup_steps) == (
        "adamw",
        1e-3,
        1.0,
        [0.9, 0.98],
        10,
    )
    assert cfg.batch_size is None, "full batch"
    assert (cfg.device, cfg.eval_every, cfg.logger.name, cfg.logger.mode) == ("auto", 1, "wandb", "offline")
    assert {"seed", "data_seed"} <= set(cfg), "model and data seeds are separate keys"


@pytest.mark.parametrize(
    "group,option",
    [
        ("task", t)
        for t in [
            "add",
            "subtract",
            "multiply",
            "divide",
            "x2xyy2",
            "random",
            "noisy_label",
            "x2y2",
            "x2xyy2x",
            "x3xy",
            "x3xy2y",
            "a2b",
            "a3b",
            "mix",
            "add_or_mul",
            "add_or_sub",
            "s5",
            "s5conj",
            "s5aba",
            "expr",
            "digit_add",
            "calculator",
        ]
    ]
    + [
        ("model", "transformer"),
        ("model", "mlp"),
        ("model", "gpt"),
        ("optimizer", "adamw"),
        ("optimizer", "adam"),
        ("optimizer", "sgd"),
        ("logger", "wandb"),
        ("logger", "none"),
    ],
)
def test_every_group_option_composes_and_validates(group, option):
    cfg = make_config([f"{group}={option}"])
    assert cfg[group].name == option
    validate(cfg)


def test_noisy_label_noise_is_a_sweepable_key():
    assert make_config(["task=noisy_label"]).task.noise == 4
    assert make_config(["task=noisy_label", "task.noise=0"]).task.noise == 0


@pytest.mark.parametrize(
    "override", ["train_fracc=0.5", "task.pp=11", "model.d_modle=64", "optimizer.momentum=0.9", "task.noise=2"]
)
def test_a_misspelled_or_foreign_key_fails_at_start_up(override):
    with pytest.raises(ConfigCompositionException):
        make_config([override])


def test_a_value_of_the_wrong_type_fails_at_start_up():
    with pytest.raises(ConfigCompositionException):
        make_config(["epochs=many"])


def test_an_unknown_group_option_fails():
    with pytest.raises(ConfigCompositionException, match="divde"):
        make_config(["task=divde"])


BAD_VALUES = [
    (["train_frac=1.5"], "train_frac=1.5: must be in (0, 1)"),
    (["train_frac=0"], "train_frac=0.0: must be in (0, 1)"),
    (["task.p=1"], "task.p=1: must be >= 2"),
    (["task=divide", "task.p=12"], "task.p=12: task=divide needs a prime p"),
    (["model.d_model=100", "model.n_heads=3"], "model.d_model=100: must be divisible by model.n_heads=3"),
    (["epochs=0"], "epochs=0: must be >= 1"),
    (["eval_every=0"], "eval_every=0: must be >= 1"),
    (["sync_seconds=-1"], "sync_seconds=-1.0: must be >= 0"),
    (["batch_size=0"], "batch_size=0: must be >= 1, or null for full batch"),
    (["model.act=tanh"], "model.act=tanh: must be one of relu, gelu"),
    (["optimizer.lr=0"], "optimizer.lr=0.0: must be > 0"),
    (["optimizer.betas=[0.9]"], "optimizer.betas=[0.9]: must be two numbers in [0, 1)"),
    (["task=noisy_label", "task.noise=-1"], "task.noise=-1: must be >= 0"),
    (["logger.mode=sometimes"], "logger.mode=sometimes: must be one of offline, online, disabled"),
    (["device=tpu"], "device=tpu: must be auto, cpu, cuda or cuda:N"),
    (["task.label_noise_frac=1.0"], "task.label_noise_frac=1.0: must be in [0, 1)"),
    (["task=mix", "task.p=15"], "task.p=15: task=mix needs a prime p"),
    (["task=s5", "task.n=1"], "task.n=1: must be in 2..6 (S_n has n! elements, (n!)^2 pairs)"),
    (["task=digit_add", "task.digits=0"], "task.digits=0: must be in 1..18"),
    (["task=digit_add", "task.n_problems=1"], "task.n_problems=1: must be >= 2, or null for every problem"),
    (
        ["model=gpt", "model.d_model=12", "model.n_heads=4"],
        "model.d_model=12: d_model / n_heads must be even for rotary positions",
    ),
    (["model=gpt", "model.n_layers=0"], "model.n_layers=0: must be >= 1"),
    (
        ["task.name=multiply"],
        "task.name=multiply: names the option task=multiply (code grok.data.tasks.multiply), "
        "not task._target_=grok.data.tasks.add; choose an option with task=NAME",
    ),
    (
        ["transforms=[grokfast_ema]", "transforms.grokfast_ema.name=slow"],
        "transforms.grokfast_ema.name=slow: must be its key in transforms, grokfast_ema",
    ),
    (["resume=''"], "resume=: must be true, false or a run directory"),
]


@pytest.mark.parametrize("overrides,message", BAD_VALUES)
def test_bad_values_are_refused_with_one_line_naming_the_field(overrides, message):
    with pytest.raises(ConfigError) as error:
        validate(make_config(overrides))
    assert str(error.value) == message
    assert "\n" not in str(error.value)


PLUGIN_GROUPS = ["task", "model", "optimizer", "loss", "transforms"]


@pytest.mark.parametrize("group", PLUGIN_GROUPS)
def test_every_option_lists_each_key_of_its_plug_ins_schema_so_each_can_be_set(group):
    """An option's yaml names its implementation (`_target_`) and sets every key of its schema: a key
    it left out could not be set from the command line without Hydra's `+`."""
    import dataclasses

    from omegaconf import OmegaConf

    from grok.plugins import Named, plugin
    from tests.conftest import ROOT

    for path in sorted((ROOT / "conf" / group).glob("*.yaml")):
        node = OmegaConf.load(path)
        if group == "transforms":  # one top-level key: the transform's name
            ((_, node),) = node.items()
        schema = getattr(plugin(node, group), "Config", Named)
        assert set(node) == {"_target_"} | {f.name for f in dataclasses.fields(schema)}, path.name


def test_a_key_its_plug_in_does_not_have_is_refused_with_the_keys_it_has():
    with pytest.raises(ConfigError, match=r"^task.pp: not a key of task=add; its keys: name, p, label_noise_frac$"):
        validate(make_config(["+task.pp=3"]))


def test_a_plug_in_that_cannot_be_imported_is_refused_in_one_line():
    with pytest.raises(ConfigError) as error:
        validate(make_config(["task._target_=my_tasks.nowhere"]))
    assert str(error.value).startswith("task._target_=my_tasks.nowhere: cannot be imported (")
    assert "\n" not in str(error.value)


def test_a_value_its_plug_in_types_refuse_names_the_field():
    with pytest.raises(ConfigError, match=r"^task.p: "):
        validate(make_config(["task.p=many"]))


def test_transforms_are_off_by_default_and_several_can_be_chosen_in_order():
    assert dict(make_config().transforms) == {}
    cfg = validate(make_config(["transforms=[orthograd,grokfast_ema]", "transforms.grokfast_ema.alpha=0.9"]))
    assert list(cfg.transforms) == ["orthograd", "grokfast_ema"] and cfg.transforms.grokfast_ema.alpha == 0.9


def test_a_plug_in_key_without_a_default_must_be_set():
    from omegaconf import OmegaConf

    from grok.plugins import typed

    with pytest.raises(ConfigError, match=r"^transforms.mine.name: must be set \(its schema has no default\)$"):
        typed(OmegaConf.create({"_target_": "grok.training.transforms.OrthoGrad"}), "transforms.mine")
