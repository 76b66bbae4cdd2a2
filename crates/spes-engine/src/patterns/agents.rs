//! The conditional, iterative and multi-agent patterns as a Rust API: write
//! a `debate`, `switch`, `quality_gate`, `refine` or sequence of agents
//! without YAML. Each builder makes the same validated [`Step`] the YAML
//! would and runs it through the same durable executor, so the calls,
//! their step keys and the results are the ones FORMAT.md describes.
//!
//! Prompts are templates you write (minijinja over the inputs); the input
//! values are data, never rendered again.
//!
//! ```
//! use std::sync::Arc;
//! use serde_json::json;
//! use spes_core::evaluate::{Check, CheckKind, Evaluator};
//! use spes_engine::Engine;
//! use spes_engine::patterns::{self, AgentSequence, Debate, QualityGate, Refine, Switch};
//! use spes_llm::scripted::ScriptedProvider;
//!
//! let script = r#"
//! - { step: argue/round1/pro, reply: "Yes: faster." }
//! - { step: argue/round1/con, reply: "No: riskier." }
//! - { step: argue/round2/pro, reply: "Risk is low." }
//! - { step: argue/round2/con, reply: "Still risky." }
//! - { step: argue/judge, reply: "Adopt it, with a rollback plan." }
//! - { step: route/classify, reply: "bug" }
//! - { step: route/bug/fix, reply: "Patch the parser." }
//! - { step: tagline/attempt1, reply: "A tool" }
//! - { step: tagline/attempt2, reply: "A durable tool for prompt workflows" }
//! - { step: blurb/iteration1, reply: "Runs offline, durably." }
//! - { step: notes/writer, reply: "draft" }
//! - { step: notes/editor, reply: "final" }
//! "#;
//! let provider = ScriptedProvider::parse("test", "answers.yaml", script).unwrap();
//! let engine = Engine::builder().provider(Arc::new(provider)).build();
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! let inputs = patterns::inputs([("q", json!("Adopt Rust?"))]);
//!
//! // Two debaters, two rounds, a judge: 2 × 2 + 1 calls.
//! let debate = Debate::new(
//!     "{{ q }}",
//!     vec![patterns::agent("pro"), patterns::agent("con")],
//!     patterns::agent("chair"),
//! )
//! .unwrap();
//! let v = rt.block_on(debate.run(&engine, "argue", inputs.clone())).unwrap();
//! assert_eq!(v["judgment"], json!("Adopt it, with a rollback plan."));
//!
//! // Route by classification.
//! let switch = Switch::new("Classify: {{ q }}")
//!     .unwrap()
//!     .route("bug", vec![patterns::llm("fix", "Fix it: {{ q }}").unwrap()])
//!     .route("feature", vec![patterns::llm("design", "Design: {{ q }}").unwrap()]);
//! let v = rt.block_on(switch.run(&engine, "route", inputs.clone())).unwrap();
//! assert_eq!((v["route"].clone(), v["output"].clone()), (json!("bug"), json!("Patch the parser.")));
//!
//! // Retry until every check passes.
//! let checks = Evaluator::Checks(vec![Check::new(CheckKind::Words { min: Some(4), max: None })]);
//! let gate = QualityGate::new("A tagline for spes.", checks).unwrap().threshold(1.0);
//! let v = rt.block_on(gate.run(&engine, "tagline", inputs.clone())).unwrap();
//! assert_eq!((v["attempts"].clone(), v["output"].clone()), (json!(2), json!("A durable tool for prompt workflows")));
//!
//! // Refine with good and bad examples in the prompt.
//! let offline = Evaluator::Checks(vec![Check::new(CheckKind::Contains("offline".into()))]);
//! let refine = Refine::new("Describe spes.", offline)
//!     .unwrap()
//!     .examples(vec!["Runs offline.".into()], vec!["Best tool ever!".into()])
//!     .threshold(1.0);
//! let v = rt.block_on(refine.run(&engine, "blurb", inputs.clone())).unwrap();
//! assert_eq!((v["passed"].clone(), v["iterations"].clone()), (json!(true), json!(1)));
//!
//! // Any step can be gated: a fan_out whose worker reads the attempt number.
//! let worker = patterns::transform("a", "template", "v{{ attempt }}").unwrap();
//! let v2 = Evaluator::Checks(vec![Check::new(CheckKind::Contains("v2".into()))]);
//! let gate = QualityGate::around(patterns::fan_out("fan", vec![worker], None), v2)
//!     .unwrap()
//!     .threshold(1.0);
//! let v = rt.block_on(gate.run(&engine, "versions", inputs.clone())).unwrap();
//! assert_eq!((v["attempts"].clone(), v["output"].clone()), (json!(2), json!({ "a": "v2" })));
//!
//! // Agents in turn, each on the previous output.
//! let seq = AgentSequence::new(vec![patterns::agent("writer"), patterns::agent("editor")], "Notes on {{ q }}")
//!     .unwrap();
//! let v = rt.block_on(seq.run(&engine, "notes", inputs)).unwrap();
//! assert_eq!(v["output"], json!("final"));
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use spes_core::evaluate::Evaluator;
use spes_core::template::{Template, TemplateError};
use spes_core::workflow::pattern::DEFAULT_GATE_FEEDBACK;
use spes_core::workflow::{
    Agent, AgentChainStep, DebateStep, Examples, Format, Input, InputType, JudgeSees, LlmStep, Loc,
    QualityGateStep, RefineStep, Step, StepKind, SwitchStep, Workflow,
};

use crate::{Engine, RunError};

/// Inputs from pairs.
pub fn inputs<K: Into<String>>(
    pairs: impl IntoIterator<Item = (K, Value)>,
) -> BTreeMap<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.into(), v)).collect()
}

/// An agent with no components (no system prompt) on the default provider.
/// Build [`Agent`] yourself for personas, providers and sampling settings.
#[must_use]
pub fn agent(name: &str) -> Arc<Agent> {
    Arc::new(Agent {
        name: name.to_owned(),
        role: None,
        components: Vec::new(),
        vars: BTreeMap::new(),
        provider: None,
        model: None,
        temperature: None,
        max_tokens: None,
    })
}

pub(super) fn llm_step(prompt: &str) -> Result<LlmStep, TemplateError> {
    Ok(LlmStep {
        prompt: Template::parse(prompt)?,
        agent: None,
        system: None,
        provider: None,
        model: None,
        temperature: None,
        max_tokens: None,
        stop: Vec::new(),
        format: Format::Text,
        schema: None,
        repair: None,
        on_truncation: None,
    })
}

/// A bare step (no output, condition or policies); shared by the pattern builders.
pub(super) fn step(name: &str, kind: StepKind) -> Step {
    Step {
        name: name.to_owned(),
        output: None,
        when: None,
        kind,
        loc: Loc::default(),
        policies: Default::default(),
    }
}

/// A plain llm step named `name` (for switch routes).
pub fn llm(name: &str, prompt: &str) -> Result<Step, TemplateError> {
    Ok(step(name, StepKind::Llm(Box::new(llm_step(prompt)?))))
}

/// Runs one step as a workflow of its own (its key is `name`) and returns its result.
pub async fn run_step(
    engine: &Engine,
    mut step: Step,
    inputs: BTreeMap<String, Value>,
) -> Result<Value, RunError> {
    step.output = Some("result".to_owned());
    let wf = Workflow {
        name: step.name.clone(),
        description: None,
        file: String::new(),
        inputs: inputs
            .iter()
            .map(|(k, v)| Input {
                name: k.clone(),
                ty: match v {
                    Value::Bool(_) => InputType::Boolean,
                    Value::Number(_) => InputType::Number,
                    Value::Array(_) => InputType::List,
                    Value::Object(_) => InputType::Object,
                    Value::String(_) | Value::Null => InputType::String,
                },
                required: true,
                default: None,
                description: None,
            })
            .collect(),
        agents: BTreeMap::new(),
        steps: vec![step],
        output: Some("result".to_owned()),
        components: Vec::new(),
        children: Vec::new(),
        schemas: Vec::new(),
        budget: None,
    };
    let out = engine.run(&wf, inputs).await?;
    Ok(out.output.unwrap_or(Value::Null))
}

/// A wrapped step that is not an llm step is keyed `KEY/attemptN/NAME`,
/// beside the judge's `KEY/attemptN/judge`.
fn wrapped_name(s: &Step) -> Result<(), RunError> {
    if s.name == "judge" && !matches!(s.kind, StepKind::Llm(_)) {
        return Err(RunError::Input(
            "the wrapped step may not be named `judge` (the evaluator's judge is journaled there)"
                .into(),
        ));
    }
    Ok(())
}

fn unit(x: f64, what: &str) -> Result<(), RunError> {
    if (0.0..=1.0).contains(&x) {
        Ok(())
    } else {
        Err(RunError::Input(format!("{what} {x} is outside 0..1")))
    }
}

/// `debate`: debaters argue in rounds (round 1: opening positions, at
/// once), then a judge decides. `debaters × rounds + 1` calls.
#[derive(Debug, Clone)]
pub struct Debate(DebateStep);

impl Debate {
    /// Two rounds, the judge sees every turn.
    pub fn new(
        topic: &str,
        debaters: Vec<Arc<Agent>>,
        judge: Arc<Agent>,
    ) -> Result<Self, TemplateError> {
        Ok(Self(DebateStep {
            debaters,
            topic: Template::parse(topic)?,
            rounds: 2,
            judge,
            judge_sees: JudgeSees::All,
        }))
    }

    /// Rounds, counting the opening positions (>= 1).
    #[must_use]
    pub fn rounds(mut self, n: u32) -> Self {
        self.0.rounds = n;
        self
    }

    /// What the judge sees.
    #[must_use]
    pub fn judge_sees(mut self, s: JudgeSees) -> Self {
        self.0.judge_sees = s;
        self
    }

    /// The step, named `name`.
    #[must_use]
    pub fn into_step(self, name: &str) -> Step {
        step(name, StepKind::Debate(Box::new(self.0)))
    }

    /// Runs it: `{ judgment, output, judge, judge_sees, history }`.
    pub async fn run(
        self,
        engine: &Engine,
        name: &str,
        inputs: BTreeMap<String, Value>,
    ) -> Result<Value, RunError> {
        if self.0.debaters.len() < 2 || self.0.rounds == 0 {
            return Err(RunError::Input(
                "a debate needs 2 or more debaters and at least 1 round".into(),
            ));
        }
        run_step(engine, self.into_step(name), inputs).await
    }
}

/// `switch`: a model classifies; the matching route runs (exact, then whole-word match).
#[derive(Debug, Clone)]
pub struct Switch(SwitchStep);

impl Switch {
    /// The classifying prompt; the route names are appended.
    pub fn new(classify: &str) -> Result<Self, TemplateError> {
        Ok(Self(SwitchStep {
            classify: Box::new(llm_step(classify)?),
            classify_name: "classify".to_owned(),
            routes: Vec::new(),
            default: None,
        }))
    }

    /// Adds a route.
    #[must_use]
    pub fn route(mut self, name: &str, steps: Vec<Step>) -> Self {
        self.0.routes.push((name.to_owned(), steps));
        self.0.routes.sort_by(|a, b| a.0.cmp(&b.0));
        self
    }

    /// Steps run when no route matches.
    #[must_use]
    pub fn default_route(mut self, steps: Vec<Step>) -> Self {
        self.0.default = Some(steps);
        self
    }

    /// The step, named `name`.
    #[must_use]
    pub fn into_step(self, name: &str) -> Step {
        step(name, StepKind::Switch(Box::new(self.0)))
    }

    /// Runs it: `{ classification, route, matched, output }`.
    pub async fn run(
        self,
        engine: &Engine,
        name: &str,
        inputs: BTreeMap<String, Value>,
    ) -> Result<Value, RunError> {
        if self.0.routes.is_empty() {
            return Err(RunError::Input("a switch needs at least one route".into()));
        }
        run_step(engine, self.into_step(name), inputs).await
    }
}

/// `quality_gate`: run, score, retry with feedback; the best attempt.
#[derive(Debug, Clone)]
pub struct QualityGate(QualityGateStep);

impl QualityGate {
    /// Threshold from the evaluator (0.8 unless criteria say otherwise), 3 attempts.
    pub fn new(prompt: &str, evaluator: Evaluator) -> Result<Self, TemplateError> {
        Self::around(
            step("step", StepKind::Llm(Box::new(llm_step(prompt)?))),
            evaluator,
        )
    }

    /// Wraps any step (a [`fan_out`](crate::patterns::fan_out), a
    /// pipeline, ...). A step that is not an llm step runs under
    /// `KEY/attemptN/NAME` and sees `attempt` and `feedback` (the rendered
    /// feedback template; empty on the first attempt); its result is scored
    /// as text (a string) or as JSON.
    pub fn around(step: Step, evaluator: Evaluator) -> Result<Self, TemplateError> {
        Ok(Self(QualityGateStep {
            step: Box::new(step),
            threshold: evaluator.default_threshold(),
            evaluator,
            max_attempts: 3,
            feedback: Template::parse(DEFAULT_GATE_FEEDBACK)?,
        }))
    }

    /// Score needed (0..1).
    #[must_use]
    pub fn threshold(mut self, t: f64) -> Self {
        self.0.threshold = t;
        self
    }

    /// Attempts in all (>= 1).
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.0.max_attempts = n;
        self
    }

    /// The feedback template appended on a retry (locals `previous`, `score`,
    /// `feedback`, `attempt`, `threshold`).
    pub fn feedback(mut self, t: &str) -> Result<Self, TemplateError> {
        self.0.feedback = Template::parse(t)?;
        Ok(self)
    }

    /// The step, named `name`.
    #[must_use]
    pub fn into_step(self, name: &str) -> Step {
        step(name, StepKind::QualityGate(Box::new(self.0)))
    }

    /// Runs it: `{ passed, attempts, best, output, score, history }`.
    pub async fn run(
        self,
        engine: &Engine,
        name: &str,
        inputs: BTreeMap<String, Value>,
    ) -> Result<Value, RunError> {
        unit(self.0.threshold, "threshold")?;
        if self.0.max_attempts == 0 {
            return Err(RunError::Input("max_attempts must be at least 1".into()));
        }
        wrapped_name(&self.0.step)?;
        run_step(engine, self.into_step(name), inputs).await
    }
}

/// `refine`: generate, evaluate, revise with feedback; the best iteration.
#[derive(Debug, Clone)]
pub struct Refine(RefineStep);

impl Refine {
    /// Threshold from the evaluator, 5 iterations, no examples.
    pub fn new(prompt: &str, evaluator: Evaluator) -> Result<Self, TemplateError> {
        Ok(Self::around(
            step("generate", StepKind::Llm(Box::new(llm_step(prompt)?))),
            evaluator,
        ))
    }

    /// Wraps any step: one that is not an llm step runs under
    /// `KEY/iterationN/NAME` and sees `iteration` and `feedback` (the
    /// previous iteration and its feedback; empty on the first).
    #[must_use]
    pub fn around(generate: Step, evaluator: Evaluator) -> Self {
        Self(RefineStep {
            generate: Box::new(generate),
            threshold: evaluator.default_threshold(),
            evaluator,
            max_iterations: 5,
            examples: Examples::default(),
        })
    }

    /// Score needed (0..1).
    #[must_use]
    pub fn threshold(mut self, t: f64) -> Self {
        self.0.threshold = t;
        self
    }

    /// Iterations in all (>= 1).
    #[must_use]
    pub fn max_iterations(mut self, n: u32) -> Self {
        self.0.max_iterations = n;
        self
    }

    /// Good and bad examples for every prompt.
    #[must_use]
    pub fn examples(mut self, good: Vec<String>, bad: Vec<String>) -> Self {
        self.0.examples = Examples { good, bad };
        self
    }

    /// The step, named `name`.
    #[must_use]
    pub fn into_step(self, name: &str) -> Step {
        step(name, StepKind::Refine(Box::new(self.0)))
    }

    /// Runs it: `{ passed, iterations, best, output, score, history }`.
    pub async fn run(
        self,
        engine: &Engine,
        name: &str,
        inputs: BTreeMap<String, Value>,
    ) -> Result<Value, RunError> {
        unit(self.0.threshold, "threshold")?;
        if self.0.max_iterations == 0 {
            return Err(RunError::Input("max_iterations must be at least 1".into()));
        }
        wrapped_name(&self.0.generate)?;
        let examples = &self.0.examples;
        if (!examples.good.is_empty() || !examples.bad.is_empty())
            && !matches!(self.0.generate.kind, StepKind::Llm(_))
        {
            return Err(RunError::Input(
                "examples go into an llm generate step's prompt; write them into the wrapped step's prompts".into(),
            ));
        }
        run_step(engine, self.into_step(name), inputs).await
    }
}

/// A sequence of agents: each gets the task and the previous agent's output.
#[derive(Debug, Clone)]
pub struct AgentSequence(AgentChainStep);

impl AgentSequence {
    /// The agents in order and the first one's task.
    pub fn new(agents: Vec<Arc<Agent>>, task: &str) -> Result<Self, TemplateError> {
        let mut seen = BTreeMap::<String, u32>::new();
        let agents = agents
            .into_iter()
            .map(|a| {
                let n = seen.entry(a.name.clone()).or_insert(0);
                *n += 1;
                let key = if *n == 1 {
                    a.name.clone()
                } else {
                    format!("{}.{n}", a.name)
                };
                (key, a)
            })
            .collect();
        Ok(Self(AgentChainStep {
            agents,
            task: Template::parse(task)?,
        }))
    }

    /// The step, named `name`.
    #[must_use]
    pub fn into_step(self, name: &str) -> Step {
        step(name, StepKind::AgentChain(Box::new(self.0)))
    }

    /// Runs it: `{ output, outputs }`.
    pub async fn run(
        self,
        engine: &Engine,
        name: &str,
        inputs: BTreeMap<String, Value>,
    ) -> Result<Value, RunError> {
        if self.0.agents.is_empty() {
            return Err(RunError::Input(
                "a sequence needs at least one agent".into(),
            ));
        }
        run_step(engine, self.into_step(name), inputs).await
    }
}
