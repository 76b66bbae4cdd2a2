//! `switch` (§3 `execute_switch`) and the agent form of `sequence`
//! (§2 `execute_sequential`).

use serde_json::{Value, json};
use spes_core::route::{RouteMatch, match_route};
use spes_core::workflow::{AgentChainStep, Loc, SwitchStep};

use crate::run::{Exec, StepResult, Stop, join_key};

impl Exec<'_> {
    pub(crate) async fn switch(
        &mut self,
        sw: &SwitchStep,
        key: &str,
        depth: usize,
        loc: &Loc,
    ) -> Result<StepResult, Stop> {
        let names: Vec<&str> = sw.routes.iter().map(|(n, _)| n.as_str()).collect();
        let user = format!(
            "{}\n\nClassify this input as one of: {}\n\nRespond with ONLY the classification label, nothing else.",
            self.prompt_of(&sw.classify, key, loc)?,
            names.join(", ")
        );
        let ckey = join_key(key, &sw.classify_name);
        let raw = self
            .llm_as(&sw.classify, user, &ckey, depth, loc)
            .await?
            .text;
        let m = match_route(&raw, names.iter().copied());
        let (route, how, steps, prefix) = match &m {
            RouteMatch::Exact(r) | RouteMatch::Word(r) => {
                let steps = sw.routes.iter().find(|(n, _)| n == r).map(|(_, s)| s);
                (Value::String(r.clone()), m.how(), steps, join_key(key, r))
            }
            RouteMatch::None => match &sw.default {
                Some(d) => (Value::Null, "default", Some(d), join_key(key, "default")),
                None => (Value::Null, "none", None, String::new()),
            },
        };
        let output = match steps {
            Some(st) => self.steps_at(st, prefix, depth + 1).await?,
            None => None,
        };
        let note = match m.route() {
            Some(r) => format!("routed to {r} ({how})"),
            None if how == "default" => "no route matched: default".to_owned(),
            None => "no route matched".to_owned(),
        };
        Ok(StepResult {
            value: Some(json!({
                "classification": raw,
                "route": route,
                "matched": how,
                "output": output,
            })),
            note: Some(note),
            usage: None,
        })
    }

    pub(crate) async fn agent_chain(
        &mut self,
        c: &AgentChainStep,
        key: &str,
        depth: usize,
        loc: &Loc,
    ) -> Result<StepResult, Stop> {
        let task = c
            .task
            .render(&self.ctx, None)
            .map_err(|e| crate::run::fail(key, loc, crate::FailureKind::Template(e)))?;
        let mut outputs = serde_json::Map::new();
        let mut previous: Option<(String, String)> = None;
        for (name, agent) in &c.agents {
            let user = match &previous {
                None => task.clone(),
                Some((who, text)) => format!(
                    "Task: {task}\n\nPrevious output ({who}):\n{text}\n\nBuild on the previous output to complete the task."
                ),
            };
            let k = join_key(key, name);
            let start = self.call_started(&k, depth);
            let r = self.agent_call(agent, user, &k, loc).await;
            self.call_finished(&k, depth, start, &r);
            let text = r?.text;
            outputs.insert(name.clone(), Value::String(text.clone()));
            previous = Some((agent.name.clone(), text));
        }
        let last = previous.map(|(_, t)| t).unwrap_or_default();
        Ok(StepResult {
            value: Some(json!({ "output": last, "outputs": outputs })),
            note: Some(format!("{} agents", c.agents.len())),
            usage: None,
        })
    }
}
