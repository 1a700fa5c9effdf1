//! Imports of a user's file into the store (SKELETON, issue 23).
