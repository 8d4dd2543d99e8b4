"""gptrecipe: the GPT-3 / ChatGPT recipe end to end, on PyTorch."""

__version__ = "0.1.0"
