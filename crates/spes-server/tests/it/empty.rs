//! A project with no files (shared by the router tests and `benches/api.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use spes_core::Diagnostics;
use spes_core::component::ComponentRegistry;
use spes_core::workflow::Workflow;
use spes_engine::Engine;
use spes_server::{Loaded, Project};

pub(crate) struct Empty;

impl Project for Empty {
    fn workflow_files(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    fn load(&self, _: &Path) -> Result<Loaded, Diagnostics> {
        Err(Diagnostics::default())
    }
    fn check_inputs(&self, _: &Workflow, _: &BTreeMap<String, Value>) -> Result<(), Diagnostics> {
        Ok(())
    }
    fn engine(&self, _: Option<&str>) -> Result<Engine, String> {
        Ok(Engine::builder().build())
    }
    fn components(&self) -> (ComponentRegistry, Diagnostics) {
        (
            ComponentRegistry::from_components(vec![]),
            Diagnostics::default(),
        )
    }
}
