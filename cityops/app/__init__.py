"""The application: the ``cityops`` command, which composes the tiers (the only code that imports
them), the supervisor of ``cityops run``, and how a service process runs and exits."""
