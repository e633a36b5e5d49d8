"""Test support code (synthetic CIFAR-10 writers): used by tests and benches, not shipped."""
