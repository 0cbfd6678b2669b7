"""The VLA model: Qwen2.5-VL backbones, prompts, inputs, checkpoints and the planner.

Heavy modules (torch, transformers) are imported by the submodules, not here, so importing
`autovla.model.prompts` stays light.
"""
