"""Velocitune against the static blends and baselines: the library of ``velocitune-compare``.

The modules, from the bottom up:

- :mod:`~megatron_velocitune.comparison.methods`: the methods' names and what each is (pure);
- :mod:`~megatron_velocitune.comparison.setting`: what every run shares, from the tool's flags;
- :mod:`~megatron_velocitune.comparison.runs`: run folders, claims, results, child processes;
- :mod:`~megatron_velocitune.comparison.targets`: the target fits on the CPT runs;
- :mod:`~megatron_velocitune.comparison.runner`: each method's run, every run of a comparison;
- :mod:`~megatron_velocitune.comparison.report`: the tables and plots of the finished runs.

The statistics the report is made of (seed spreads, Pareto points, collapses, the Markdown
tables) are pure and live in :mod:`megatron_velocitune.laws.comparison`; the command line is
:mod:`megatron_velocitune.cli.compare_policies`.
"""
