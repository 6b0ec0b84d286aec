"""Model: the encoder families' component maps, the methods (which entries train), checkpoints, the
seeded init of a (task, seed), partly trained tensors, and export as a model or a PEFT adapter."""
