"""The version, from one source: ``pyproject.toml``, as the installed distribution's metadata."""

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("cityops")
except PackageNotFoundError:  # a checkout on sys.path that was never installed
    VERSION = "0+unknown"
