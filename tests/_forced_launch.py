"""Test helper: the `autovla` command with accelerate's FSDP or DeepSpeed path on the CPU.

accelerate selects FSDP and DeepSpeed only on GPUs: `Accelerator(cpu=True)` always gives
MULTI_CPU (DDP over gloo), whatever the launch config says, and `autovla` refuses such a launch
(`train.distributed.check_launch`). Launched as

    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 \\
        tests/_forced_launch.py train sft --config ...

this script builds the accelerator as `autovla` does, then gives accelerate's state the plugin
of the launch config (read from the launcher's environment, as accelerate itself does) and
its distributed type, so the training loop's own FSDP2 / DeepSpeed code runs over gloo:
`prepare`, sharded steps, checkpoints, resuming. Test use only.
"""

from __future__ import annotations

import os

from autovla.train import distributed, loop

_ASKED = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DEEPSPEED"}


def forced_accelerator(device: str, precision: str):
    from accelerate.state import PartialState
    from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin

    asked = [v for k, v in _ASKED.items() if os.environ.get(k, "").lower() == "true"]
    if len(asked) != 1:
        raise SystemExit("launch this with an accelerate FSDP or DeepSpeed config")
    saved = {k: os.environ.pop(k) for k in _ASKED if k in os.environ}
    try:
        acc = distributed.make_accelerator(device, precision)  # MULTI_CPU
    finally:
        os.environ.update(saved)
    state, mp = acc.state, acc.state.mixed_precision
    if asked[0] == "FSDP":
        plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables of the launcher
        if mp != "no":
            plugin.set_mixed_precision(mp)
        state.fsdp_plugin = plugin
    else:
        plugin = DeepSpeedPlugin()  # from the ACCELERATE_DEEPSPEED_* variables
        plugin.set_mixed_precision(mp)
        plugin.select(_from_accelerator_state=True)
        state.deepspeed_plugins = {"default": plugin}
        acc.deepspeed_engine_wrapped = None
    # AcceleratorState copies PartialState's fields whenever it is made again: set both
    PartialState().distributed_type = state.distributed_type = getattr(DistributedType, asked[0])
    distributed.check_launch(acc)  # sharded now: the guard lets it through
    return acc


if __name__ == "__main__":
    loop.make_accelerator = forced_accelerator
    from autovla.cli import main

    main()
