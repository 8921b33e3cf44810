"""janus_train: sequences, SFT and GRPO on the data janus_data produces."""
