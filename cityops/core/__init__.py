"""The shared core: what every tier may import, and all that tiers share.

``contracts`` (the messages and names that cross tiers), ``settings`` (where the stack is),
``schema`` (the database relations tiers read and write), ``registry`` (devices), ``kafka``
and ``mqtt`` (clients with the project's delivery semantics), ``aio`` (the shape of I/O
objects), ``log``, ``metrics``, ``senml``, ``version`` and ``errors``. It imports no tier, nor the
development stack or the application (checked by ``lint-imports``).
"""
