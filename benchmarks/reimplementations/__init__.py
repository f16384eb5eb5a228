"""Literal re-implementations of the releases' computations: the equivalence tests' reference and, labelled as such,
a benchmark baseline when the authors' files are not at hand."""
