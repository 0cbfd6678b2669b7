"""Training configs refuse runs that could not train anything, for SFT and RFT alike."""

import pytest

from autovla.config import ConfigError, load_config
from autovla.train.config import SFTConfig
from autovla.train.rft_config import RFTConfig

MODEL = ["model.path=some/model"]
DATA = ["data.datasets=[{path: d}]"]


@pytest.mark.parametrize("cls", [SFTConfig, RFTConfig])
def test_empty_data_is_refused(cls):
    with pytest.raises(ConfigError, match=r"data\.datasets is empty"):
        load_config(cls, None, MODEL)


@pytest.mark.parametrize("cls", [SFTConfig, RFTConfig])
def test_everything_frozen_without_lora_is_refused(cls):
    frozen = ["train.freeze_vision=true", "train.freeze_language=true", "train.lora.enabled=false"]
    with pytest.raises(ConfigError, match="nothing would be trained"):
        load_config(cls, None, MODEL + DATA + frozen)
    ok = load_config(cls, None, [*MODEL, *DATA, *frozen[:2], "train.lora.enabled=true"])
    assert ok.train.lora.enabled
