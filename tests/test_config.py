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


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=[1,", r"override 'optim.lr=\[1,': not valid YAML at line 1, column 4"),
        ("optim.lr={a: 1", r"override 'optim.lr=\{a: 1': not valid YAML at line 1, column 6"),
        ("optim.lr=!!python/object:os.system x", r"could not determine a constructor"),
        ("optim.lr=2020-13-45", r"not valid YAML: month must be in 1..12"),
        ("optim.lr=" + "[" * 100_000, r"nested more than 32 levels deep"),
        ("optim.lr=&a [*a]", r"nested more than 32 levels deep"),
    ],
    ids=["open list", "open map", "python tag", "bad date", "100k deep", "self alias"],
)
def test_override_yaml_errors_quote_the_override(override, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(Run, None, [override])
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


def test_recipe_yaml_errors_name_file_and_line(tmp_path):
    p = tmp_path / "r[1].yaml"
    p.write_text("name: base\noptim:\n  lr: [1, 2\n  warmup: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(Run, p)
    assert (
        str(e.value) == f"{p}: not valid YAML at line 4, column 9: expected ',' or ']', but got ':'"
    )
    p.write_bytes(b"name: \xff\n")
    with pytest.raises(ConfigError, match=r"r\[1\]\.yaml: not UTF-8 text \(byte offset 6\)"):
        load_config(Run, p)
    p.write_text("inherit: [a]\n")
    with pytest.raises(ConfigError, match=r"inherit must be a file name, got \['a'\]"):
        load_config(Run, p)
    p.write_text("inherit: nope.yaml\n")
    with pytest.raises(ConfigError, match=r"r\[1\]\.yaml: inherit 'nope.yaml': no such file"):
        load_config(Run, p)


def test_recipe_nesting_and_alias_expansion_are_bounded(tmp_path):
    p = tmp_path / "deep.yaml"
    p.write_text("name: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match=r"deep\.yaml: nested more than 32 levels deep"):
        load_config(Run, p)
    p.write_text("optim: " + "{a: " * 40 + "1" + "}" * 40 + "\n")  # parses, still too deep
    with pytest.raises(ConfigError, match="nested more than 32 levels deep"):
        load_config(Run, p)
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    p.write_text("\n".join(lines) + "\n")  # 10^9 strings once expanded
    with pytest.raises(ConfigError, match="more than 100000 values"):
        load_config(Run, p)


def test_validation_errors_are_one_bounded_line():
    with pytest.raises(ConfigError) as e:
        load_config(Run, None, ["optim.lr=" + "x" * 10_000, "optim.warmup=[1]", "nope=1"])
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400
    assert msg.startswith("invalid config (defaults + overrides): ")
    assert "optim.warmup: Input should be a valid integer (got [1])" in msg
    assert "nope: unknown key (check for a typo) (got 1)" in msg
