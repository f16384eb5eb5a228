"""Developer benchmarks: ours against the authors' code (or, labelled as such, our re-implementations of it)."""
