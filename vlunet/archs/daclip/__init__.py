"""DA-CLIP networks: degradation-aware CLIP encoder and its restoration networks (IR-SDE U-Net, NAFNet + DA-CLIP)."""
