"""A metering reverse proxy for compute and inference APIs."""

__version__ = "0.1.0"
