import pytest

from autovla.config import ConfigError, StrictModel, load_config, parse_overrides


class Optim(StrictModel):
    lr: float = 1e-5
    warmup: int = 500


class Run(StrictModel):
    name: str = "tiny"
    optim: Optim = Optim()


def test_defaults_yaml_and_overrides(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("name: base\noptim:\n  lr: 0.001\n")
    child = tmp_path / "child.yaml"
    child.write_text("inherit: base.yaml\noptim:\n  warmup: 10\n")
    cfg = load_config(Run, child, ["optim.lr=2e-5"])
    assert cfg.name == "base" and cfg.optim.warmup == 10 and cfg.optim.lr == 2e-5
    assert load_config(Run).optim.lr == 1e-5


def test_unknown_key_is_an_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lrr: 1\n")
    with pytest.raises(ConfigError, match=r"optim.lrr: unknown key"):
        load_config(Run, p)


def test_bad_value_quotes_it():
    with pytest.raises(ConfigError, match="'fast'"):
        load_config(Run, None, ["optim.lr=fast"])


def test_parse_overrides():
    assert parse_overrides(["a.b=[1,2]", "c=x"]) == {"a": {"b": [1, 2]}, "c": "x"}
    with pytest.raises(ConfigError):
        parse_overrides(["novalue"])
