"""Fine-tuning: supervised (SFT, dual thinking) and, later, reinforcement (RFT).

Import the pieces from their modules (`autovla.train.sft.train_sft`, ...); this package
imports nothing heavy so the CLI stays fast.
"""
