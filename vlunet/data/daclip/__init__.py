"""DA-CLIP data: captioned degradation pairs for the encoder and the 10-task universal restoration set."""
