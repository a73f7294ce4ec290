"""ntm: Normalizing Trajectory Models."""

__version__ = "0.1.0"
