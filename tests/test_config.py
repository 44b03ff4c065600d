"""Configs: YAML sections into dataclasses, dotted overrides, clear errors for unknown keys."""

from pathlib import Path

import pytest

from bigscene.config import CONFIG_DIR, Config, load_config, save_resolved
from bigscene.errors import ConfigError


def test_defaults_yaml_and_overrides_layer_in_order(tmp_path: Path) -> None:
    yaml = tmp_path / "c.yaml"
    yaml.write_text("scene:\n  up: points\n  roi_margin: 0.25\ntrain:\n  steps: 7\n")
    config = load_config(yaml, ["train.steps=9", "partition.overlap=0.2"])
    assert isinstance(config, Config)
    assert config.scene.up == "points"
    assert config.scene.roi_margin == 0.25
    assert config.train.steps == 9
    assert config.partition.overlap == 0.2
    assert config.model.kind == "neus"


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_every_bundled_config_loads_by_name(name: str) -> None:
    assert isinstance(load_config(name), Config)


def test_unknown_override_key_names_key_and_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["scene.upp=points"])
    assert "scene.upp" in str(err.value) and "roi_margin" in str(err.value)


def test_unknown_section_lists_sections(tmp_path: Path) -> None:
    yaml = tmp_path / "c.yaml"
    yaml.write_text("scenery:\n  up: z\n")
    with pytest.raises(ConfigError) as err:
        load_config(yaml)
    assert str(yaml) in str(err.value) and "scenery" in str(err.value) and "partition" in str(err.value)


def test_unknown_key_in_yaml_section_is_an_error(tmp_path: Path) -> None:
    yaml = tmp_path / "c.yaml"
    yaml.write_text("train:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match="train.stepz.*ckpt_every"):
        load_config(yaml)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.steps=many", "train.steps"),
        ("scene.up=sideways", "auto, cameras, points"),
        ("logging.tracker=mlflow", "wandb, tensorboard, csv, none"),
        ("steps=3", "valid sections"),
        ("scene.up", "section.key=value"),
    ],
)
def test_bad_values_are_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_config_file_lists_bundled_ones() -> None:
    with pytest.raises(ConfigError, match="colmap"):
        load_config("no-such-config")


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    config = load_config(None, ["scene.roi_margin=0.3", "logging.tracker=csv"])
    save_resolved(config, str(tmp_path / "resolved.yaml"))
    assert load_config(tmp_path / "resolved.yaml") == config
