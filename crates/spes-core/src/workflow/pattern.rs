//! Runtime types of the conditional, iterative and multi-agent step kinds:
//! `switch`, `quality_gate`, `refine`, `debate` and the agent form of
//! `sequence` (the reference's §2, §3 and §4).

use std::sync::Arc;

use super::{Agent, LlmStep, Step};
use crate::evaluate::Evaluator;
use crate::template::Template;

/// The feedback prompt a quality gate appends on a retry unless it sets
/// `feedback` (locals: `previous`, `score`, `feedback`, `attempt`, `threshold`).
pub const DEFAULT_GATE_FEEDBACK: &str = "\n\nPrevious attempt (quality: {{ score }}):\n{{ previous }}\n\nFeedback:\n{{ feedback }}\n\nImprove the output to meet the quality threshold of {{ threshold }}.";

/// `switch`: a model classifies, the matching route runs (§3 `execute_switch`).
#[derive(Debug, Clone)]
pub struct SwitchStep {
    /// The classifying llm step; the route names are appended to its prompt.
    pub classify: Box<LlmStep>,
    /// The classifying call's name in the step key (`KEY/classify` unless it sets `name`).
    pub classify_name: String,
    /// Routes in name order.
    pub routes: Vec<(String, Vec<Step>)>,
    /// When no route matched; `None` gives the explicit no-match result.
    pub default: Option<Vec<Step>>,
}

/// `quality_gate`: run, score, retry with feedback (§3 `execute_quality_gate`).
#[derive(Debug, Clone)]
pub struct QualityGateStep {
    /// The step run on each attempt: an llm step (the feedback is appended
    /// to its prompt; its call is keyed `KEY/attemptN`), or a step of any
    /// other kind (run under `KEY/attemptN/NAME`, seeing the locals
    /// `attempt` and `feedback`).
    pub step: Box<Step>,
    /// How attempts are scored.
    pub evaluator: Evaluator,
    /// Score needed to stop (0..1).
    pub threshold: f64,
    /// Attempts in all, counting the first (>= 1).
    pub max_attempts: u32,
    /// Appended to an llm step's prompt on a retry (another kind sees it
    /// rendered as the local `feedback`).
    pub feedback: Template,
}

/// Good and bad examples shown in a refine prompt.
#[derive(Debug, Clone, Default)]
pub struct Examples {
    /// Follow these.
    pub good: Vec<String>,
    /// Avoid these.
    pub bad: Vec<String>,
}

/// `refine`: generate, evaluate, revise with feedback (§4 `refine`).
#[derive(Debug, Clone)]
pub struct RefineStep {
    /// The step run on each iteration: an llm step (its prompt is the first
    /// prompt; its call is keyed `KEY/iterationN`), or a step of any other
    /// kind (run under `KEY/iterationN/NAME`, seeing the locals `iteration`
    /// and `feedback`).
    pub generate: Box<Step>,
    /// How iterations are scored.
    pub evaluator: Evaluator,
    /// Score needed to stop (0..1).
    pub threshold: f64,
    /// Iterations in all, counting the first (>= 1).
    pub max_iterations: u32,
    /// Examples placed in every prompt (an llm `generate` only).
    pub examples: Examples,
}

/// What a debate's judge sees of each turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JudgeSees {
    /// Every turn of every round, in full (the default).
    All,
    /// Only the last round, in full.
    Last,
    /// Every turn, cut to its first [`SUMMARY_CHARS`] characters (the reference's behaviour).
    Summary,
}

/// Characters of each turn a `judge_sees: summary` judge gets.
pub const SUMMARY_CHARS: usize = 200;

impl JudgeSees {
    /// The YAML name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Last => "last",
            Self::Summary => "summary",
        }
    }
}

/// `debate` (§2 `execute_debate`).
#[derive(Debug, Clone)]
pub struct DebateStep {
    /// The debaters (>= 2).
    pub debaters: Vec<Arc<Agent>>,
    /// The question (template).
    pub topic: Template,
    /// Rounds, counting the opening positions as round 1 (>= 1): the debate
    /// makes `debaters × rounds + 1` calls.
    pub rounds: u32,
    /// Who decides.
    pub judge: Arc<Agent>,
    /// What the judge sees.
    pub judge_sees: JudgeSees,
}

/// `sequence` with `agents` + `task`: each agent gets the previous one's
/// output (§2 `execute_sequential`).
#[derive(Debug, Clone)]
pub struct AgentChainStep {
    /// The agents in order, with the name each one's call is keyed by
    /// (`editor`, or `editor.2` for a second turn of the same agent).
    pub agents: Vec<(String, Arc<Agent>)>,
    /// The first agent's task (template).
    pub task: Template,
}
