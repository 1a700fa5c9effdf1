//! Downloads into the store (SKELETON, issue 23).
