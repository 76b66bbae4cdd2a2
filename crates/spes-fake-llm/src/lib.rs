//! spes-fake-llm
