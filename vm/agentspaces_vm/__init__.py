"""The workspace agent that runs on each VM (Python 3.12 stdlib + cryptography)."""

__version__ = "0.1.0"
