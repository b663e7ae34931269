"""The package version, in one place (jaxtl.__version__, checkpoints, jaxtl --version)."""

__version__ = "0.1.0"
