//! Vizier, the in-guest agent.
//!
//! So far only its version exists: it is part of every artifact hash, so that shipping a new
//! agent re-runs bootstrap instead of answering NoOp against a guest with a stale agent.

/// Version of the agent castrad installs. Changing it changes every `artifact_hash`.
pub const VERSION: &str = "0.1.0";
