//! spes-engine
