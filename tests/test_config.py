"""Configuration: shipped configs, strict validation, one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from i2m2_med.config import Config, config_from_dict, load_config, shipped_config_path
from i2m2_med.errors import ConfigError


def _write(tmp_path: Path, data, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


def _cpu_dict() -> dict:
    return yaml.safe_load(shipped_config_path("cpu").read_text())


def test_paper_config_is_the_reference():
    c = load_config("paper")
    e = c.model.image_expert
    assert c.image_size == 320
    assert (e.stem_width, e.stem_stride) == (64, 1)
    assert e.blocks == [2, 2, 2, 2] and e.widths == [64, 128, 256, 512]
    assert (e.groups, e.pool_size, e.final_norm) == (32, 10, False)
    o = c.optim
    assert (o.magnitude.lr, o.magnitude.weight_decay) == (1e-5, 1e-3)
    assert (o.phase.lr, o.phase.weight_decay) == (1e-4, 1e-1)
    assert (o.joint.lr, o.joint.weight_decay) == (1e-4, 1e-2)
    assert (o.tabular.lr, o.tabular.weight_decay) == (1e-3, 1e-2)
    t = c.training
    assert t.batch_size == 16
    assert (t.early_stopping.patience, t.early_stopping.monitor, t.early_stopping.mode) == (5, "val_selection", "max")


def test_cpu_config_is_compact_with_the_same_structure():
    cpu, paper = load_config("cpu"), load_config("paper")
    assert cpu.name == "cpu" and cpu.image_size == 64
    assert len(cpu.model.image_expert.widths) == len(paper.model.image_expert.widths) == 4
    assert max(cpu.model.image_expert.widths) < max(paper.model.image_expert.widths)
    assert cpu.model.image_expert.feature_size(cpu.image_size) == 4
    assert cpu.model.image_expert.pool_size == 2


def test_demo_config_is_the_cpu_architecture_trained_at_scale():
    cpu, demo = load_config("cpu"), load_config("demo")
    assert (cpu.training.warm_start, demo.training.warm_start) == (False, True)
    scale = {
        "training.warm_start": True, "training.warm_start_epochs": 8, "training.warm_start_joint_epochs": 32,
        "training.max_epochs": 12,
        "training.early_stopping.patience": 6, "training.sampling": "hard_cases", "training.epoch_slices": 6144,
        "training.tensor_cache": True, "training.cache_size": 0, "model.joint.tabular_dropout": 0.2,
    }
    assert demo == cpu.with_updates(name="demo", **scale)  # the architecture and everything else: cpu.yaml's
    assert demo.training.early_stopping.monitor == "val_selection"


def test_load_from_path_equals_name_and_round_trips(tmp_path):
    by_name = load_config("cpu")
    assert load_config(shipped_config_path("cpu")) == by_name
    assert config_from_dict(by_name.to_dict()) == by_name
    again = load_config(_write(tmp_path, by_name.to_yaml(), "again.yaml"))
    assert again == by_name


def test_retired_keys_load_at_their_one_value_only(tmp_path):
    """Keys removed because they allowed one value (or an option that is gone, at its "off"
    value) still load, so older YAML files and checkpoints do; any other value is refused."""
    data = _cpu_dict()
    data["model"]["image_expert"].update(kind="preact_resnet", norm="group", stem_kernel=3)
    data["model"]["joint"].update(swi_channel=False, swi_power=4, image_fusion="early")
    data["optim"]["optimizer"] = "adamw"
    assert load_config(_write(tmp_path, data)) == load_config("cpu")
    assert "kind" in data["model"]["image_expert"]  # the caller's dict is left as it was
    for section, key, value in [("image_expert", "stem_kernel", 4), ("joint", "swi_channel", True),
                                ("joint", "image_fusion", "hadamard"), ("image_expert", "norm", "batch")]:
        bad = _cpu_dict()
        bad["model"][section][key] = value
        with pytest.raises(ConfigError, match=f"model.{section}.{key}: unknown key"):
            load_config(_write(tmp_path, bad))


def test_scientific_notation_without_dot_is_a_float(tmp_path):
    text = shipped_config_path("cpu").read_text().replace("magnitude: {lr: 2.0e-3", "magnitude: {lr: 3e-4")
    assert "lr: 3e-4" in text
    c = load_config(_write(tmp_path, text))
    assert c.optim.magnitude.lr == pytest.approx(3e-4)


@pytest.mark.parametrize(
    "edit, key, expected",
    [
        (lambda d: d["model"]["image_expert"].update(widthz=[1]), "model.image_expert.widthz", "unknown key"),
        (lambda d: d.update(learning_rate=1.0), "learning_rate", "unknown key"),
        (lambda d: d["training"].update(batch_size="16"), "training.batch_size", "valid integer"),
        (lambda d: d["model"]["image_expert"].update(widths=[16, 32, "x", 128]), "model.image_expert.widths.2", "valid integer"),
        (lambda d: d["model"].update(prior=1), "model.prior", "valid boolean"),
        (lambda d: d["model"]["joint"].update(tabular_fusion="attention"), "model.joint.tabular_fusion", "'film', 'concat' or 'none'"),
        (lambda d: d["training"].update(aggregation="median"), "training.aggregation", "unknown rule 'median'; expected one of top3_mean, max, mean"),
        (lambda d: d["optim"]["phase"].update(lr=-1.0), "optim.phase.lr", "greater than 0"),
        (lambda d: d["training"]["early_stopping"].update(patience=2.5), "training.early_stopping.patience", "valid integer"),
        (lambda d: d["model"]["image_expert"].update(groups=5), "model.image_expert", "groups=5 must divide"),
        (lambda d: d["model"]["image_expert"].update(blocks=[1, 1]), "model.image_expert", "same length"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(tmp_path, edit, key, expected):
    data = _cpu_dict()
    edit(data)
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = info.value.one_line()
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}")
    assert expected in message


def test_pool_larger_than_the_feature_map_is_refused(tmp_path):
    data = _cpu_dict()
    data["model"]["image_expert"]["pool_size"] = 5  # the 64 px cpu config ends at 4x4
    with pytest.raises(ConfigError, match="pool_size=5 exceeds the last feature map \\(4x4"):
        load_config(_write(tmp_path, data))


def test_several_errors_are_counted_on_one_line(tmp_path):
    data = _cpu_dict()
    data["foo"] = 1
    data["bar"] = 2
    with pytest.raises(ConfigError, match=r"unknown key \(and 1 more\)$"):
        load_config(_write(tmp_path, data))


def test_missing_file_unknown_name_bad_yaml_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="no such config file"):
        load_config("gpu")
    with pytest.raises(ConfigError, match=r"invalid YAML at line 3"):
        load_config(_write(tmp_path, "name: x\nmodel: [1,\n  : :\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(_write(tmp_path, "- 1\n- 2\n"))


def test_with_updates_validates_and_refuses_unknown_keys():
    c = load_config("cpu")
    d = c.with_updates(**{"training.max_epochs": 3, "image_size": 32})
    assert (d.training.max_epochs, d.image_size) == (3, 32)
    assert c.training.max_epochs == 15  # the original is unchanged (frozen)
    with pytest.raises(ConfigError, match="training.max_epoch: unknown key"):
        c.with_updates(**{"training.max_epoch": 3})
    with pytest.raises(ConfigError, match="training.max_epochs: Input should be greater than or equal to 1"):
        c.with_updates(**{"training.max_epochs": 0})


def test_defaults_build_a_valid_config():
    c = Config()
    assert c.model.image_expert.blocks == [2, 2, 2, 2]
    assert c.training.class_weighting == "loss"
