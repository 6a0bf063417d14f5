"""BladeGPT: train a small GPT on text you love, on the machine you have."""

__version__ = "0.1.0"
