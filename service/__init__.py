"""labelsvc: a self-hostable image-labeling REST API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("labelsvc")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
