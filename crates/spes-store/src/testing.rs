//! The conformance suite every [`RunStore`] backend runs (feature `testing`).
//!
//! [`conformance!`](crate::conformance) expands to one named
//! `#[tokio::test]` per behaviour, each with a fresh store from the
//! factory you give it:
//!
//! ```text
//! spes_store::conformance!(sqlite, async || {
//!     let dir = tempfile::tempdir().unwrap();
//!     let store = SqliteStore::open(&dir.path().join("s.db"), SqliteOptions::default()).await.unwrap();
//!     // Return the store, or (store, guard) to keep the guard alive for the test.
//!     (Arc::new(store) as Arc<dyn RunStore>, dir)
//! });
//! ```
//!
//! The crate invoking it needs `tokio` (features `macros`, `rt-multi-thread`)
//! among its dev-dependencies. The behaviours themselves are plain async
//! functions in [`cases`], so a backend can also call one directly.

// The suite's job is to fail loudly: these are test assertions that live
// in the library only so that every backend's tests can share them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use crate::RunStore;

/// What a conformance factory returns: a store, or a store with a guard
/// (a temporary directory, a database handle) kept alive until the test ends.
pub trait Fixture: Send {
    /// The store under test.
    fn store(&self) -> Arc<dyn RunStore>;
}

impl Fixture for Arc<dyn RunStore> {
    fn store(&self) -> Arc<dyn RunStore> {
        Arc::clone(self)
    }
}

impl<G: Send> Fixture for (Arc<dyn RunStore>, G) {
    fn store(&self) -> Arc<dyn RunStore> {
        Arc::clone(&self.0)
    }
}

/// Expands to a module `$suite` with one `#[tokio::test]` per behaviour of
/// [`cases`], each calling `$factory().await` for a fresh store (anything
/// implementing [`Fixture`]).
#[macro_export]
macro_rules! conformance {
    ($suite:ident, $factory:expr $(,)?) => {
        mod $suite {
            #[allow(unused_imports)]
            use super::*;

            $crate::__conformance_cases!(
                $factory;
                create_then_get_returns_every_field,
                create_with_an_existing_id_is_a_conflict,
                unknown_run_is_none,
                find_by_full_id_or_prefix,
                find_with_an_ambiguous_prefix_is_ambiguous,
                find_unknown_or_too_short_is_not_found,
                list_is_newest_first_and_filters_by_status,
                query_filters_and_pages_with_a_keyset_cursor,
                transition_moves_status_and_applies_patch,
                transition_from_another_status_is_a_conflict_naming_it,
                transition_of_unknown_run_is_not_found,
                racing_transitions_exactly_one_wins,
                claim_checks_status_and_owner,
                racing_claims_of_a_dead_owners_run_exactly_one_wins,
                append_returns_new_then_existing_keeping_first_payload,
                append_encoded_is_append_with_the_payload_already_encoded,
                a_lone_append_reports_the_status_its_commit_read,
                entries_come_in_commit_order,
                entries_after_a_seq_come_in_order_and_bounded,
                usage_sums_the_model_calls_of_each_run,
                entries_of_runs_are_separate,
                entry_looks_up_by_key,
                append_to_unknown_run_is_not_found,
                concurrent_appends_all_land_and_a_missing_run_fails_alone,
                racing_appends_of_one_key_write_once,
                open_gate_is_idempotent,
                open_gate_on_unknown_run_is_not_found,
                decide_once_then_already_with_first_decision,
                racing_decides_exactly_one_wins,
                deciding_an_unopened_gate_is_not_found,
                decision_is_a_journal_entry,
                pending_filter_lists_only_undecided_gates,
                gate_keeps_request_and_deadline,
                json_payloads_round_trip,
                large_payload_round_trips,
                prune_deletes_only_old_finished_runs_with_their_journal_and_gates,
            );
        }
    };
}

/// Implementation detail of [`conformance!`](crate::conformance).
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = ($factory)().await;
                let store = $crate::testing::Fixture::store(&fixture);
                $crate::testing::cases::$case(store).await;
                drop(fixture);
            }
        )*
    };
}

/// A run to create in tests: `Running`, one pinned component, small inputs.
#[must_use]
pub fn sample_run() -> crate::NewRun {
    crate::NewRun {
        id: crate::RunId::new(),
        workflow_name: "triage".into(),
        workflow_path: "/project/workflows/triage.yaml".into(),
        workflow_hash: "ab".repeat(32),
        workflow_source: "name: triage\nsteps: []\n".into(),
        pins: vec![crate::ComponentPin {
            reference: "persona/software-architect@1.0.0".into(),
            sha256: "cd".repeat(32),
            path: "/project/components/persona-software-architect-v1.0.0.md".into(),
        }],
        inputs: serde_json::json!({"text": "login throws NPE"}),
        status: crate::RunStatus::Running,
        owner: Some("host:42".into()),
        settings: crate::RunSettings {
            provider: Some("openai".into()),
            budget: Some(spes_core::budget::Budget {
                cost: Some(2.5),
                ..Default::default()
            }),
            trace_parent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            trace_queued: false,
        },
    }
}

pub mod cases;
pub mod postgres;
