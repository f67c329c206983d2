"""crossgraft: cross-modal attention grafted onto pretrained vision-language models."""

__version__ = "0.1.0"
