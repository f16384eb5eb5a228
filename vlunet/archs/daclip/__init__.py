"""DA-CLIP networks: the degradation-aware CLIP encoder and its restoration networks (IR-SDE U-Net, NAFNet + DA-CLIP)."""
