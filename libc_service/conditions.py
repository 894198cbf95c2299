"""The conditions a route may carry (``under``, ``flags``, ``to``, ``named``, ``resolved``, ...).

This is where the documented ``from libc_service.conditions import named``
finds them; they belong to the policy layer
(:mod:`libc_service.policy.conditions`), beside the router that tests them.
"""

from libc_service.policy.conditions import *  # noqa: F403
from libc_service.policy.conditions import __all__ as __all__
