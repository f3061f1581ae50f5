"""torch-struct conformance suite for semiring_flash (see compat/conformance.py)."""
