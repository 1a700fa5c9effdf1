//! Periodic Vizier health checks (filled in below).
