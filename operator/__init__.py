"""alpaca-operator: Stanford-Alpaca-style instruction tuning as Kubernetes resources.

The folder is installed as ``alpaca_operator`` because a top-level ``operator`` package would
shadow Python's standard library module of that name.
"""

__version__ = "0.1.0"
