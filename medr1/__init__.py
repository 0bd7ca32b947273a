"""medr1: GRPO and SFT for medical visual question answering with vision-language models."""

__version__ = "0.1.0"
