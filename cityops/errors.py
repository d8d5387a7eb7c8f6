"""Errors of the shared package (contracts, local stack, registry, schema)."""


class CityopsError(Exception):
    """Base of every error the cityops package raises on purpose."""


class StackError(CityopsError):
    """The local stack could not be installed, started, or stopped."""


class SchemaError(CityopsError):
    """The database schema could not be created or checked."""
