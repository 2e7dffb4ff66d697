"""The parity tolerances live in the package (``fer_fast.tolerances``, shared with the selfcheck);
the tests import them from here."""
from fer_fast.tolerances import TOLERANCES, tolerance  # noqa: F401
