//! End-to-end tests for Castra live in `tests/it/`; this crate only hosts the binaries they run.
