import pytest

from dist_geo.config import (
    ConfigError, build_config, bundled_config, flatten, from_dict, save_config, to_dict,
)


def test_defaults_are_cosplace():
    cfg = build_config()
    assert (cfg.data.M, cfg.data.alpha, cfg.data.N, cfg.data.L) == (10, 30, 5, 2)
    assert (cfg.data.groups_num, cfg.data.min_images_per_class) == (8, 10)
    assert (cfg.loss.name, cfg.loss.s, cfg.loss.m) == ("cosface", 30.0, 0.4)
    assert (cfg.optim.lr, cfg.optim.classifiers_lr, cfg.train.batch_size) == (1e-5, 1e-2, 32)
    assert cfg.model.fc_output_dim == 512 and cfg.eval.positive_dist_threshold == 25


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("loss: {name: arcface, s: 64}\noptim: {lr: 1e-4}\n")
    cfg = build_config(path, ["loss.m=0.5", "eval.recall_values=[1, 5]", "data.augment.hflip=true"])
    assert (cfg.loss.name, cfg.loss.s, cfg.loss.m) == ("arcface", 64.0, 0.5)
    assert cfg.optim.lr == 1e-4  # YAML reads 1e-4 as a string; the float field coerces it
    assert cfg.eval.recall_values == [1, 5] and cfg.data.augment.hflip is True


@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.nmae=3", "unknown config key 'loss.nmae'"),
        ("loss.name=softmax", "command line: loss.name='softmax' is not one of"),
        ("train.batch_size=0", "below its minimum"),
        ("train.batch_size=big", "expected an integer"),
        ("data.augment.hflip=maybe", "expected true/false"),
        ("loss", "not of the form"),
        ("optim.lr=nan", "command line: optim.lr=nan is not a finite number"),
        ("optim.lr=inf", "optim.lr=inf is not a finite number"),
        ("loss.s=.nan", "loss.s=nan is not a finite number"),
        ("eval.recall_values=[1, -5]", r"eval.recall_values\[1\]=-5 is below its minimum 1"),
        ("eval.recall_values=[]", "eval.recall_values=\\[\\] must not be empty"),
        ("loss.s={a: 1, a: 2}", "override 'loss.s={a: 1, a: 2}': duplicate key 'a'"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config(None, [override])


def test_bad_file_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("loss: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        build_config(path)
    path.write_text("train: {epochs: 3}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'train.epochs'"):
        build_config(path)


def test_duplicate_yaml_keys_name_the_file_and_key(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("optim:\n  lr: 1e-3\n  name: adam\n  lr: 1e-5\n")
    with pytest.raises(ConfigError) as error:
        build_config(path)
    assert str(error.value) == f"{path}: duplicate key 'lr' (line 4)"


def test_round_trip_and_flatten(tmp_path):
    cfg = build_config(None, ["loss.name=circle", "loss.gamma=80"])
    save_config(cfg, tmp_path / "c.yaml")
    assert build_config(tmp_path / "c.yaml") == cfg
    assert from_dict(to_dict(cfg)) == cfg
    flat = flatten(to_dict(cfg))
    assert flat["loss.gamma"] == 80.0 and flat["data.augment.hue"] == 0.5


def test_bundled_configs_are_valid():
    assert build_config(bundled_config("default")).data.image_size == 512
    with pytest.raises(ConfigError, match="no bundled config 'nope'"):
        bundled_config("nope")
