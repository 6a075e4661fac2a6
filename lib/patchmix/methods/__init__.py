"""Training methods, one registered piece each, written as the paper's steps.

Import order is registration order: the order in which tables, figures and the command line
list the methods. ``docs/adding-a-method.md`` shows how to add one.
"""

from patchmix.methods.base import (
    METHODS,
    ROLES,
    Method,
    Net,
    baseline_methods,
    method_label,
    method_with_role,
    register_method,
)

# the built-in methods, each registered by its own module, in the order they are listed
# isort: off
from patchmix.methods import ce  # noqa: F401
from patchmix.methods import weighted_ce  # noqa: F401
from patchmix.methods import mixup  # noqa: F401
from patchmix.methods import cutmix  # noqa: F401
from patchmix.methods import patchmix_ce  # noqa: F401
from patchmix.methods import specaug  # noqa: F401
from patchmix.methods import patchmix_cl  # noqa: F401
# isort: on

__all__ = ["METHODS", "ROLES", "Method", "Net", "baseline_methods", "method_label",
           "method_with_role", "register_method"]
