"""`autovla train sft|rft`: fine-tuning commands, one training loop (autovla.train.loop)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import typer

from autovla.cli.common import console, fail

app = typer.Typer(no_args_is_help=True)

CONFIG_OPTION = typer.Option(..., "--config", "-c", help="YAML recipe (see configs/).")
OVERRIDES_ARG = typer.Argument(None, help="Overrides such as train.max_steps=10 optim.lr=1e-4.")


def load_run_config(cls: type, config: Path, overrides: list[str] | None):
    """A typed config from YAML + overrides, or a user-facing error (shared by train commands)."""
    from autovla.config import ConfigError, load_config

    try:
        return load_config(cls, config, overrides or [])
    except ConfigError as e:
        raise fail(str(e)) from None


def _train(train: Any, cfg: Any) -> Any:
    """Run a stage (failures go to the root group's error policy); a signal that stopped it
    gives the usual exit code, 128 + the signal's number."""
    result = train(cfg)
    if result.interrupted:
        if result.is_main:
            console.print(f"interrupted at step {result.steps}; resume with the same command")
        sig = signal.Signals[result.signal] if result.signal else signal.SIGINT
        raise typer.Exit(128 + sig.value)
    if result.is_main and result.stopped_by == "time":
        console.print(f"stopped by train.max_minutes at step {result.steps}; rerun to continue")
    return result


@app.command("sft")
def sft(config: Path = CONFIG_OPTION, overrides: list[str] | None = OVERRIDES_ARG) -> None:
    """Supervised fine-tuning with dual thinking (or action-only); resumes when interrupted.

    Run under `accelerate launch --config_file configs/accelerate/ddp.yaml -m autovla.cli ...`
    (or the `autovla` script) for several processes.
    """
    from autovla.train.config import SFTConfig

    cfg = load_run_config(SFTConfig, config, overrides)
    from autovla.train.sft import train_sft

    result = _train(train_sft, cfg)
    if not result.is_main:
        return
    if result.val:
        v = result.val
        console.print(
            f"val: L2 avg {v.get('l2_avg', float('nan')):.3f} m (constant velocity "
            f"{v.get('cv_l2_avg', float('nan')):.3f}), slow thinking on complex "
            f"{v.get('slow_share_complex', float('nan')):.2f} vs straightforward "
            f"{v.get('slow_share_straightforward', float('nan')):.2f}"
        )
    console.print(f"checkpoint: {result.checkpoint}")


def _refuse_waypoint_model(path: str | None) -> None:
    """RFT samples and scores action tokens: say so before loading a waypoint model."""
    from autovla.model.checkpoint import is_model_dir
    from autovla.model.prompts import FORMAT_FILE, PromptFormat, require_action_tokens

    if path is None or not is_model_dir(path) or not (Path(path) / FORMAT_FILE).is_file():
        return  # the loader says what is wrong with it
    try:
        require_action_tokens(PromptFormat.load(path), f"train rft (model {path})")
    except ValueError as e:
        raise fail(str(e)) from None


@app.command("rft")
def rft(config: Path = CONFIG_OPTION, overrides: list[str] | None = OVERRIDES_ARG) -> None:
    """Reinforcement fine-tuning with GRPO from an SFT model; resumes when interrupted.

    Several processes: `accelerate launch -m autovla.cli train rft ...` (DDP; each process
    samples whole groups for its own prompts).
    """
    from autovla.train.rft_config import RFTConfig

    cfg = load_run_config(RFTConfig, config, overrides)
    _refuse_waypoint_model(cfg.model.path)
    from autovla.train.rft import train_rft

    result = _train(train_rft, cfg)
    if not result.is_main:
        return
    m = result.train
    if m:
        terms = ", ".join(
            f"{k[len('reward_') :]} {v:.3f}"
            for k, v in m.items()
            if k.startswith("reward_") and k not in ("reward_group_std", "reward_unscored")
        )
        console.print(
            f"last window: reward {m['reward']:.3f} ({terms}; {m['reward_unscored']:.0f} "
            f"unscored), KL {m['kl']:.2e}, slow thinking {m['slow_share']:.2f}"
        )
    console.print(f"checkpoint: {result.checkpoint}")
