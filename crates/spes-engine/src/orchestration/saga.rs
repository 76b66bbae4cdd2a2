//! `saga`: steps in order; when one fails, the completed steps'
//! compensations run in reverse order.
//!
//! Unlike the reference (which reports a failed compensation as done):
//! - each compensation's outcome is recorded: `compensated`,
//!   `compensation_failed` (with the error) or `no_compensation`;
//! - the saga's status is `completed`, `compensated` (every completed step
//!   was undone; the run goes on and can branch on `status`) or
//!   `compensation_failed` (something could not be undone: the step, and
//!   so the run, fails; resuming retries the failed compensations only);
//! - the failure point is journaled (`KEY#failed`) before compensating, so
//!   a resumed saga never retries the failed forward step after its
//!   predecessors were undone.

use serde_json::{Value, json};
use spes_core::workflow::{Loc, SagaStep, StepKey};

use super::fail;
use crate::error::FailureKind;
use crate::run::{Exec, StepResult, Stop, join_key};

impl Exec<'_> {
    pub(crate) async fn saga(
        &mut self,
        sg: &SagaStep,
        output: Option<&str>,
        key: &str,
        depth: usize,
        loc: &Loc,
    ) -> Result<StepResult, Stop> {
        let fail_key = StepKey::from(key).tag("failed").into_string();
        let recorded = self.decision_at(&fail_key, loc).await?;
        let recorded_at = recorded
            .as_ref()
            .and_then(|d| d.get("index"))
            .and_then(Value::as_u64)
            .and_then(|i| usize::try_from(i).ok());
        let mut completed = Vec::new();
        let mut failure: Option<(usize, String)> = None;
        for (i, a) in sg.actions.iter().enumerate() {
            if recorded_at == Some(i) {
                let msg = recorded
                    .as_ref()
                    .and_then(|d| d.get("error"))
                    .and_then(Value::as_str)
                    .unwrap_or("failed")
                    .to_owned();
                failure = Some((i, msg));
                break;
            }
            match self.step(&a.step, key, depth + 1).await {
                Ok(_) => completed.push(i),
                Err(Stop::Failed(e)) => {
                    let d = json!({ "index": i, "step": a.step.name, "error": e.kind.to_string() });
                    let d = self.record_decision(&fail_key, d, loc).await?;
                    let msg = d
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("failed")
                        .to_owned();
                    failure = Some((i, msg));
                    break;
                }
                Err(other) => return Err(other),
            }
        }
        let names = |idx: &[usize]| -> Vec<Value> {
            idx.iter()
                .map(|&i| Value::String(sg.actions[i].step.name.clone()))
                .collect()
        };
        let Some((failed_at, error)) = failure else {
            return Ok(StepResult {
                value: Some(json!({
                    "status": "completed",
                    "completed": names(&completed),
                    "compensations": [],
                })),
                note: Some(format!("{} steps completed", completed.len())),
                usage: None,
            });
        };
        let failed_step = sg.actions[failed_at].step.name.clone();
        let mut outcomes = Vec::new();
        let mut broken = Vec::new();
        for &j in completed.iter().rev() {
            let a = &sg.actions[j];
            let Some(c) = &a.compensate else {
                outcomes.push(json!({ "step": a.step.name, "status": "no_compensation" }));
                continue;
            };
            let mut child = self.fork();
            child
                .ctx
                .insert("error".into(), Value::String(error.clone()));
            child
                .ctx
                .insert("failed_step".into(), Value::String(failed_step.clone()));
            let r = child.step(c, &join_key(key, &a.step.name), depth + 1).await;
            self.absorb(child);
            match r {
                Ok(v) => outcomes.push(json!({
                    "step": a.step.name,
                    "status": "compensated",
                    "output": v.unwrap_or(Value::Null),
                })),
                Err(Stop::Failed(e)) => {
                    broken.push(format!("`{}`: {}", a.step.name, e.kind));
                    outcomes.push(json!({
                        "step": a.step.name,
                        "status": "compensation_failed",
                        "error": e.kind.to_string(),
                    }));
                }
                Err(other) => return Err(other),
            }
        }
        let status = if broken.is_empty() {
            "compensated"
        } else {
            "compensation_failed"
        };
        let result = json!({
            "status": status,
            "failed_step": failed_step,
            "error": error,
            "completed": names(&completed),
            "compensations": outcomes,
        });
        if broken.is_empty() {
            return Ok(StepResult {
                value: Some(result),
                note: Some(format!(
                    "`{failed_step}` failed; {} step(s) compensated in reverse order",
                    completed.len()
                )),
                usage: None,
            });
        }
        if let Some(o) = output {
            self.write(o, result);
        }
        Err(fail(
            key,
            loc,
            FailureKind::Compensation(format!(
                "saga step `{failed_step}` failed ({error}) and {} compensation(s) failed too, so its effects are only partly undone: {}; fix the cause and resume the run to retry them",
                broken.len(),
                broken.join("; ")
            )),
        ))
    }
}
