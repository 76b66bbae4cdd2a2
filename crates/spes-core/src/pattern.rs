//! The pattern selector (reference §1.2 and the conclusion's table): which
//! workflow pattern fits a set of requirements, and why.
//!
//! The reference's five requirement flags keep its priority order
//! (independent tasks, specialized roles, quality critical, need decision,
//! complex coordination; sequential otherwise). The conclusion's table adds
//! five more situations; they never override the reference's order, but
//! they are listed as further patterns to combine, each with the spes step
//! kinds or policies that implement it.
//!
//! ```
//! use spes_core::pattern::{Requirements, suggest};
//! let s = suggest(&Requirements { independent_tasks: true, quality_critical: true, ..Requirements::default() });
//! assert_eq!(s.primary.pattern, spes_core::pattern::Pattern::Parallel);
//! assert_eq!(s.also[0].pattern, spes_core::pattern::Pattern::Iterative);
//! ```

use serde::Serialize;

/// Requirement flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Requirements {
    /// Tasks that do not depend on each other.
    pub independent_tasks: bool,
    /// The work needs specialist perspectives.
    pub specialized_roles: bool,
    /// Output quality must meet a bar.
    pub quality_critical: bool,
    /// The path depends on the input.
    pub need_decision: bool,
    /// A coordinator delegates to sub-workflows.
    pub complex_coordination: bool,
    /// A person must judge or approve.
    pub human_judgment: bool,
    /// Calls may fail (rate limits, outages).
    pub unreliable_api: bool,
    /// Several distinct phases.
    pub multi_phase: bool,
    /// Runs for hours or days, or waits for people.
    pub long_running: bool,
    /// Many similar items (documents, rows).
    pub many_items: bool,
}

/// The patterns the selector names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// Steps one after another.
    Sequential,
    /// Independent work side by side.
    Parallel,
    /// Specialist agents collaborating.
    MultiAgent,
    /// Generate, evaluate, improve.
    Iterative,
    /// Route by a decision.
    Conditional,
    /// A coordinator and sub-workflows.
    Hierarchical,
    /// A human decides.
    HumanInTheLoop,
    /// Retry, fallback, circuit breaker, degradation.
    ErrorRecovery,
    /// Reusable building blocks.
    Composition,
    /// Durable state with pause and resume.
    Stateful,
    /// Map over items, then reduce.
    MapReduce,
}

impl Pattern {
    /// The reference's name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sequential => "sequential",
            Self::Parallel => "parallel",
            Self::MultiAgent => "multi_agent",
            Self::Iterative => "iterative",
            Self::Conditional => "conditional",
            Self::Hierarchical => "hierarchical",
            Self::HumanInTheLoop => "human_in_the_loop",
            Self::ErrorRecovery => "error_recovery",
            Self::Composition => "composition",
            Self::Stateful => "stateful",
            Self::MapReduce => "map_reduce",
        }
    }

    /// The spes step kinds or policies that implement it.
    #[must_use]
    pub fn spes_kinds(self) -> &'static str {
        match self {
            Self::Sequential => "a list of steps (`llm`, `transform`), or `sequence`",
            Self::Parallel => "`parallel` (steps or agents + task), `fan_out`",
            Self::MultiAgent => "`parallel` with `agents` and `synthesize`, `debate`",
            Self::Iterative => "`refine`, `quality_gate`",
            Self::Conditional => "`branch`, `switch`",
            Self::Hierarchical => "`workflow` (sub-workflows), `fan_out`",
            Self::HumanInTheLoop => "`approval`, `choose`, `sections`",
            Self::ErrorRecovery => {
                "policies `retry`, `fallback`, `circuit_breaker`, `degrade`, `timeout`"
            }
            Self::Composition => {
                "`workflow` (sub-workflows), `pipeline`, agents built from components"
            }
            Self::Stateful => "every spes run (journal, `spes resume`, `spes pause`)",
            Self::MapReduce => "`map` then `reduce`",
        }
    }
}

/// One recommendation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pick {
    /// The pattern.
    pub pattern: Pattern,
    /// Why.
    pub reason: &'static str,
    /// What to write in spes.
    pub spes: &'static str,
}

/// The selector's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Suggestion {
    /// The pattern the reference's priority order picks.
    pub primary: Pick,
    /// Further patterns the other requirements call for, in priority order.
    pub also: Vec<Pick>,
}

fn pick(pattern: Pattern, reason: &'static str) -> Pick {
    Pick {
        pattern,
        reason,
        spes: pattern.spes_kinds(),
    }
}

/// Every flag, its pattern and reason, in priority order (reference first).
fn table(r: &Requirements) -> [(bool, Pattern, &'static str); 10] {
    [
        (
            r.independent_tasks,
            Pattern::Parallel,
            "independent tasks can run concurrently",
        ),
        (
            r.specialized_roles,
            Pattern::MultiAgent,
            "specialized roles give specialist perspectives",
        ),
        (
            r.quality_critical,
            Pattern::Iterative,
            "quality-critical output needs refinement to a threshold",
        ),
        (
            r.need_decision,
            Pattern::Conditional,
            "decision points route the work",
        ),
        (
            r.complex_coordination,
            Pattern::Hierarchical,
            "complex coordination needs a coordinator and sub-workflows",
        ),
        (
            r.many_items,
            Pattern::MapReduce,
            "many items need parallelism plus aggregation",
        ),
        (
            r.human_judgment,
            Pattern::HumanInTheLoop,
            "a critical decision needs human judgment",
        ),
        (
            r.unreliable_api,
            Pattern::ErrorRecovery,
            "calls that may fail need resilience",
        ),
        (
            r.long_running,
            Pattern::Stateful,
            "long-running work needs pause and resume",
        ),
        (
            r.multi_phase,
            Pattern::Composition,
            "a multi-phase pipeline needs modular building blocks",
        ),
    ]
}

/// Recommends a pattern for the requirements.
#[must_use]
pub fn suggest(r: &Requirements) -> Suggestion {
    let mut hits = table(r)
        .into_iter()
        .filter(|(on, _, _)| *on)
        .map(|(_, p, why)| pick(p, why));
    let primary = hits.next().unwrap_or_else(|| {
        pick(
            Pattern::Sequential,
            "no special requirement: a simple chain is enough",
        )
    });
    Suggestion {
        primary,
        also: hits.collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(f: impl Fn(&mut Requirements)) -> Pattern {
        let mut r = Requirements::default();
        f(&mut r);
        suggest(&r).primary.pattern
    }

    #[test]
    fn each_reference_flag_alone() {
        assert_eq!(only(|_| {}), Pattern::Sequential);
        assert_eq!(only(|r| r.independent_tasks = true), Pattern::Parallel);
        assert_eq!(only(|r| r.specialized_roles = true), Pattern::MultiAgent);
        assert_eq!(only(|r| r.quality_critical = true), Pattern::Iterative);
        assert_eq!(only(|r| r.need_decision = true), Pattern::Conditional);
        assert_eq!(
            only(|r| r.complex_coordination = true),
            Pattern::Hierarchical
        );
    }

    #[test]
    fn the_reference_priority_order_holds() {
        let all = Requirements {
            independent_tasks: true,
            specialized_roles: true,
            quality_critical: true,
            need_decision: true,
            complex_coordination: true,
            ..Requirements::default()
        };
        let s = suggest(&all);
        assert_eq!(s.primary.pattern, Pattern::Parallel);
        let rest: Vec<Pattern> = s.also.iter().map(|p| p.pattern).collect();
        assert_eq!(
            rest,
            vec![
                Pattern::MultiAgent,
                Pattern::Iterative,
                Pattern::Conditional,
                Pattern::Hierarchical
            ]
        );
        let no_parallel = Requirements {
            independent_tasks: false,
            ..all
        };
        assert_eq!(suggest(&no_parallel).primary.pattern, Pattern::MultiAgent);
        let q_and_d = Requirements {
            quality_critical: true,
            need_decision: true,
            ..Requirements::default()
        };
        assert_eq!(suggest(&q_and_d).primary.pattern, Pattern::Iterative);
    }

    #[test]
    fn the_conclusion_table_situations() {
        assert_eq!(only(|r| r.many_items = true), Pattern::MapReduce);
        assert_eq!(only(|r| r.human_judgment = true), Pattern::HumanInTheLoop);
        assert_eq!(only(|r| r.unreliable_api = true), Pattern::ErrorRecovery);
        assert_eq!(only(|r| r.long_running = true), Pattern::Stateful);
        assert_eq!(only(|r| r.multi_phase = true), Pattern::Composition);
        // They never override the reference's flags.
        let r = Requirements {
            many_items: true,
            need_decision: true,
            ..Requirements::default()
        };
        let s = suggest(&r);
        assert_eq!(s.primary.pattern, Pattern::Conditional);
        assert_eq!(s.also[0].pattern, Pattern::MapReduce);
        assert!(!s.primary.reason.is_empty() && !s.primary.spes.is_empty());
    }
}
