"""cityops: the shared core (``cityops.core``), the local development stack
(``cityops.devstack``) and the application that composes the tiers (``cityops.app``).

The version has one source, ``pyproject.toml``; the installed distribution's metadata carries it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cityops")
except PackageNotFoundError:  # a checkout on sys.path that was never installed
    __version__ = "0+unknown"
