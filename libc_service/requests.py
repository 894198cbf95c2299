"""The typed requests, one pydantic model per function, and their union ``Request``.

This is where the documented ``from libc_service.requests import OpenRequest``
finds them; the models themselves belong to the protocol layer
(:mod:`libc_service.protocol.requests`), beside the codec that builds them.
"""

from libc_service.protocol.requests import *  # noqa: F403
from libc_service.protocol.requests import __all__ as __all__
