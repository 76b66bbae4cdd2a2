//! Integration tests for the `spes` binary: one test binary, several modules.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cli;
mod common;
mod malformed;
mod people;
mod rendering;
mod shapes;
mod terminal;
