"""Training side of the kit: data sets, SFT, GRPO, rewards, quantization and the toy task."""
