"""cityops: the shared core (``cityops.core``), the local development stack
(``cityops.devstack``) and the application that composes the tiers (``cityops.app``)."""

from cityops.core.version import VERSION as __version__

__all__ = ["__version__"]
