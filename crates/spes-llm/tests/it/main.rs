//! Integration tests of the HTTP adapters against `spes-fake-llm`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod errors;
mod parity;
mod raw;
mod registry;
mod requests;
mod secrets;
mod support;
mod tools;
mod wire;
