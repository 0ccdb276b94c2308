"""dist-geo: distributed CosPlace-style training and evaluation for visual geo-localization."""

__version__ = "0.1.0"
