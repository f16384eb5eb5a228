"""Perceive-IR helpers: the frozen VGG-16 feature extractor of the difficulty-adaptive perceptual loss."""
