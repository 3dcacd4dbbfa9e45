"""ftctl: fine-tune causal language models wherever the GPUs are."""

__version__ = "0.1.0"
