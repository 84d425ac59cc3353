"""tf-migrate: migrate legacy PyTorch transformer code to modern form."""

__version__ = "0.1.0"
