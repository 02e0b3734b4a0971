"""Reproductions of the paper's experiments (table 1, figures 3 and 4, from-scratch widths,
training overhead): recipes over the product's own run path, with cached raw results in ``results/``."""
