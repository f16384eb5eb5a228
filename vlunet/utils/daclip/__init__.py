"""DA-CLIP helpers: official checkpoint conversion and the IR-SDE schedule/sampler."""
