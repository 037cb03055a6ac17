"""cogqa: cost-optimal grouped-query attention for long-context modeling.

Modules follow the data: ``shapes`` -> ``costs`` -> ``laws`` -> ``search`` for the analytic side,
``model`` -> ``data`` -> ``train`` -> ``sweep`` -> ``evaluate`` -> ``report`` for the pipeline that
produces scaling laws. Importing ``cogqa`` does not import torch.
"""

__version__ = "0.1.0"
