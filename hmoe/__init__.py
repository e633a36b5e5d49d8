"""hmoe: a hierarchical mixture of experts on CIFAR-10, tracked with DVC and MLflow."""

import os

# No usage statistics leave hmoe. Every hmoe process (the stages, the sweep and its Ray
# workers, serving, the servers hmoe.teamstack starts) imports this before MLflow,
# whose client telemetry is decided at import. MLFLOW_DISABLE_TELEMETRY=false opts in.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

__version__ = "0.1.0"
