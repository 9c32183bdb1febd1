"""3-party replicated secret sharing protocols. Each takes `Shares` first, public parameters next, then `*, party`."""
from .sharing import Shares  # noqa: F401
