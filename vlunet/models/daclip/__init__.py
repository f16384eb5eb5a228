"""DA-CLIP models: the encoder (controller) training and IR-SDE restoration."""
