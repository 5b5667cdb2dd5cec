"""Shoal's Python SDK: federate your own model with a Shoal coordinator.

Subclass :class:`Client` (``fit`` and ``evaluate`` on named numpy arrays), describe your data with
:class:`DatasetInfo`, and call :func:`run_client`. The coordinator's job names the model's tensors
(``[model] kind = "external"``); see ``docs/guide/own-model.md``.
"""

from shoal.client import (
    MAX_MESSAGE_BYTES,
    MAX_TRANSFER_BYTES,
    PROTOCOL_VERSION,
    SDK_MODEL_KINDS,
    Client,
    DatasetInfo,
    EvaluateConfig,
    FitConfig,
    InitialConfig,
    LocalTraining,
    ParameterError,
    Parameters,
    Rejected,
    ShoalError,
    parameters_from_wire,
    parameters_to_wire,
    run_client,
)

__version__ = "0.1.0"

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_TRANSFER_BYTES",
    "PROTOCOL_VERSION",
    "SDK_MODEL_KINDS",
    "Client",
    "DatasetInfo",
    "EvaluateConfig",
    "FitConfig",
    "InitialConfig",
    "LocalTraining",
    "ParameterError",
    "Parameters",
    "Rejected",
    "ShoalError",
    "parameters_from_wire",
    "parameters_to_wire",
    "run_client",
    "__version__",
]
