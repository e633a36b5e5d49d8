"""hmoe: a hierarchical mixture of experts on CIFAR-10, tracked with DVC and MLflow."""

__version__ = "0.1.0"
