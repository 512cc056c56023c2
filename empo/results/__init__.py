"""Reporting only: the aggregate table, the comparison with the paper, sweeps and figures."""
