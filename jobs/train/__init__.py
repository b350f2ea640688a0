"""Supervised fine-tuning, Alpaca style: prompt templates, tokenisation with response-only labels,
packing, FSDP2 sharding, checkpoints that survive a kill, and the `alpaca train` entrypoint."""
