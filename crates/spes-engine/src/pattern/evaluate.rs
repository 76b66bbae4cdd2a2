//! `quality_gate` (§3) and `refine` (§4), and the evaluators they share.
//! Scoring is pure (`spes_core::evaluate`); judge calls are journaled.

use serde_json::{Value, json};
use spes_core::evaluate::{
    CriterionScore, Evaluation, Evaluator, Judge, Measure, best_attempt, judge_prompt,
    parse_verdict, round4, score_checks, score_criteria, score_verdict,
};
use spes_core::message::ChatRequest;
use spes_core::template::Context;
use spes_core::workflow::{Examples, Loc, QualityGateStep, RefineStep, Step, StepKind};

use crate::error::FailureKind;
use crate::run::{Exec, StepResult, Stop, fail, join_key};

/// One scored attempt.
struct Attempt {
    /// The wrapped step's result (an llm step's: its text).
    output: Value,
    /// What was scored: the text, or the result's JSON.
    text: String,
    eval: Evaluation,
}

/// The text an evaluator scores: a string as it is, any other value as JSON.
fn scored_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The prompt block with good and bad examples (the reference's `refine_with_examples`).
pub(crate) fn with_examples(task: &str, ex: &Examples) -> String {
    if ex.good.is_empty() && ex.bad.is_empty() {
        return task.to_owned();
    }
    let mut out = format!("Task: {task}\n");
    if !ex.good.is_empty() {
        out.push_str("\nGood Examples (follow these patterns):\n");
        for (i, e) in ex.good.iter().enumerate() {
            out.push_str(&format!("\n{}. {e}\n", i + 1));
        }
    }
    if !ex.bad.is_empty() {
        out.push_str("\nBad Examples (avoid these patterns):\n");
        for (i, e) in ex.bad.iter().enumerate() {
            out.push_str(&format!("\n{}. {e}\n", i + 1));
        }
    }
    out.push_str(
        "\nNow complete the task, following the good examples and avoiding the bad examples.",
    );
    out
}

impl Exec<'_> {
    async fn judge(
        &mut self,
        j: &Judge,
        text: &str,
        key: &str,
        depth: usize,
        loc: &Loc,
    ) -> Result<spes_core::evaluate::Verdict, Stop> {
        let start = self.call_started(key, depth);
        let r = self.judge_call(j, text, key, loc).await;
        self.call_finished(key, depth, start, &r);
        r
    }

    async fn judge_call(
        &mut self,
        j: &Judge,
        text: &str,
        key: &str,
        loc: &Loc,
    ) -> Result<spes_core::evaluate::Verdict, Stop> {
        let rubric = j
            .rubric
            .render(&self.ctx, None)
            .map_err(|e| fail(key, loc, FailureKind::Template(e)))?;
        let mut req = ChatRequest::user(judge_prompt(&rubric, text));
        let (provider, components) = self.prepare(j.agent.as_deref(), None, &mut req, key, loc)?;
        let answer = self.call(&provider, &req, components, key, loc).await?.text;
        parse_verdict(&answer).map_err(|e| {
            fail(
                key,
                loc,
                FailureKind::Answer(format!(
                    "{e}; the judge must answer {{\"score\": 0..1, \"feedback\": \"...\"}}; it answered: {:?}",
                    answer.chars().take(80).collect::<String>()
                )),
            )
        })
    }

    /// Scores `text`; judge calls go under `KEY/judge[/CRITERION]`.
    async fn evaluate(
        &mut self,
        ev: &Evaluator,
        threshold: f64,
        text: &str,
        key: &str,
        depth: usize,
        loc: &Loc,
    ) -> Result<Evaluation, Stop> {
        let jkey = join_key(key, "judge");
        Ok(match ev {
            Evaluator::Checks(cs) => {
                let outcomes: Vec<_> = cs.iter().map(|c| c.run(text)).collect();
                score_checks(&outcomes, threshold)
            }
            Evaluator::Judge(j) => {
                score_verdict(&self.judge(j, text, &jkey, depth, loc).await?, threshold)
            }
            Evaluator::Criteria(cs) => {
                let mut scores = Vec::new();
                for c in cs {
                    let (score, feedback) = match &c.measure {
                        Measure::Check(ch) => {
                            let o = ch.run(text);
                            (if o.passed { 1.0 } else { 0.0 }, o.detail)
                        }
                        Measure::Judge(j) => {
                            let v = self
                                .judge(j, text, &join_key(&jkey, &c.name), depth, loc)
                                .await?;
                            (v.score, v.feedback)
                        }
                        Measure::Score(t) => {
                            let score = spes_core::evaluate::graded_score(t, &self.ctx, text)
                                .map_err(|e| fail(key, loc, FailureKind::Template(e)))?;
                            (score, format!("graded {score}"))
                        }
                    };
                    scores.push(CriterionScore {
                        name: c.name.clone(),
                        score,
                        weight: c.weight,
                        threshold: c.threshold,
                        feedback,
                    });
                }
                score_criteria(scores, threshold)
            }
        })
    }

    /// The result object shared by quality_gate and refine: the passing
    /// attempt, else the best by score (earliest on a tie), and the history.
    fn best_of(attempts: &[Attempt], count_field: &str, item_field: &str) -> StepResult {
        let passed = attempts.last().is_some_and(|a| a.eval.passed);
        let idx = if passed {
            attempts.len().saturating_sub(1)
        } else {
            let scores: Vec<f64> = attempts.iter().map(|a| a.eval.score).collect();
            best_attempt(&scores).unwrap_or(0)
        };
        let history: Vec<Value> = attempts
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let mut h = a.eval.to_json();
                if let Some(o) = h.as_object_mut() {
                    o.insert(item_field.into(), json!(i + 1));
                    o.insert("output".into(), a.output.clone());
                    if item_field == "iteration" {
                        let improved = i == 0 || a.eval.score > attempts[i - 1].eval.score;
                        o.insert("improved".into(), json!(improved));
                    }
                }
                h
            })
            .collect();
        let best = attempts.get(idx);
        let score = best.map_or(0.0, |b| b.eval.score);
        StepResult {
            value: Some(json!({
                "passed": passed,
                count_field: attempts.len(),
                "best": idx + 1,
                "output": best.map(|b| b.output.clone()).unwrap_or(Value::Null),
                "score": round4(score),
                "history": history,
            })),
            note: Some(format!(
                "{} after {} {}; best {} scored {:.2}",
                if passed {
                    "passed"
                } else {
                    "threshold not met"
                },
                attempts.len(),
                if attempts.len() == 1 {
                    item_field.to_owned()
                } else {
                    format!("{item_field}s")
                },
                idx + 1,
                score
            )),
            usage: None,
        }
    }

    /// Runs a wrapped step that is not an llm step once: under
    /// `PREFIX/NAME` (`KEY/attemptN/NAME`), in a fork whose context adds
    /// `counter` (= `n`) and `feedback`. Only its counters come back (its
    /// own writes stay inside the attempt, as validation assumes).
    async fn wrapped_run(
        &mut self,
        step: &Step,
        prefix: &str,
        depth: usize,
        counter: &str,
        n: u32,
        feedback: String,
    ) -> Result<Value, Stop> {
        let mut child = self.fork();
        child.ctx.insert(counter.into(), json!(n));
        child.ctx.insert("feedback".into(), Value::String(feedback));
        let r = child.step(step, prefix, depth + 1).await;
        self.absorb_counters(&child);
        Ok(r?.unwrap_or(Value::Null))
    }

    pub(crate) async fn quality_gate(
        &mut self,
        q: &QualityGateStep,
        key: &str,
        depth: usize,
        loc: &Loc,
    ) -> Result<StepResult, Stop> {
        let llm = match &q.step.kind {
            StepKind::Llm(l) => Some(l.as_ref()),
            _ => None,
        };
        let base = match llm {
            Some(l) => self.prompt_of(l, key, loc)?,
            None => String::new(),
        };
        let mut attempts: Vec<Attempt> = Vec::new();
        for i in 1..=q.max_attempts {
            let feedback = match attempts.last() {
                None => String::new(),
                Some(prev) => {
                    let mut locals = Context::new();
                    locals.insert("previous".into(), json!(prev.text));
                    locals.insert("score".into(), json!(round4(prev.eval.score)));
                    locals.insert("feedback".into(), json!(prev.eval.feedback));
                    locals.insert("attempt".into(), json!(i));
                    locals.insert("threshold".into(), json!(q.threshold));
                    q.feedback
                        .render(&self.ctx, Some(&locals))
                        .map_err(|e| fail(key, loc, FailureKind::Template(e)))?
                }
            };
            let akey = join_key(key, &format!("attempt{i}"));
            let output = match llm {
                Some(l) => Value::String(
                    self.llm_as(l, format!("{base}{feedback}"), &akey, depth, loc)
                        .await?
                        .text,
                ),
                None => {
                    self.wrapped_run(&q.step, &akey, depth, "attempt", i, feedback)
                        .await?
                }
            };
            let text = scored_text(&output);
            let eval = self
                .evaluate(&q.evaluator, q.threshold, &text, &akey, depth, loc)
                .await?;
            let passed = eval.passed;
            attempts.push(Attempt { output, text, eval });
            if passed {
                break;
            }
        }
        Ok(Self::best_of(&attempts, "attempts", "attempt"))
    }

    pub(crate) async fn refine(
        &mut self,
        r: &RefineStep,
        key: &str,
        depth: usize,
        loc: &Loc,
    ) -> Result<StepResult, Stop> {
        let llm = match &r.generate.kind {
            StepKind::Llm(l) => Some(l.as_ref()),
            _ => None,
        };
        let initial = match llm {
            Some(l) => with_examples(&self.prompt_of(l, key, loc)?, &r.examples),
            None => String::new(),
        };
        let mut attempts: Vec<Attempt> = Vec::new();
        for i in 1..=r.max_iterations {
            let feedback = match attempts.last() {
                None => String::new(),
                Some(prev) => format!(
                    "\n\nPrevious Attempt (Iteration {}):\n{}\n\nFeedback:\n{}\n\nPlease revise the output to address the feedback and improve quality.",
                    i - 1,
                    prev.text,
                    prev.eval.feedback
                ),
            };
            let ikey = join_key(key, &format!("iteration{i}"));
            let output = match llm {
                Some(l) => Value::String(
                    self.llm_as(l, format!("{initial}{feedback}"), &ikey, depth, loc)
                        .await?
                        .text,
                ),
                None => {
                    self.wrapped_run(&r.generate, &ikey, depth, "iteration", i, feedback)
                        .await?
                }
            };
            let text = scored_text(&output);
            let eval = self
                .evaluate(&r.evaluator, r.threshold, &text, &ikey, depth, loc)
                .await?;
            let passed = eval.passed;
            attempts.push(Attempt { output, text, eval });
            if passed {
                break;
            }
        }
        Ok(Self::best_of(&attempts, "iterations", "iteration"))
    }
}
