//! Helpers for Shoal's integration tests live in `tests/`; this library is empty on purpose.
