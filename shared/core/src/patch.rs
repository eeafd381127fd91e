//! Plan patches: the canonical shape, normalisation of what LLMs really write, and applying a
//! patch to a plan with every rule checked.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::types::{
    FINALIZE_CAPABILITY, GENERATION_CAPABILITY, Plan, PlanStep, QA_CAPABILITY, STRATEGY_CAPABILITY,
    StepAction, StepStatus,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct StepUpdate {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StepStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A change to a plan: the only way a plan changes, and what `plan_update` frames carry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PlanPatch {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps_add: Vec<PlanStep>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps_update: Vec<StepUpdate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps_remove: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl PlanPatch {
    pub fn is_empty(&self) -> bool {
        self.steps_add.is_empty() && self.steps_update.is_empty() && self.steps_remove.is_empty()
    }

    /// The shape of the patch without ids or notes, to recognise a planner repeating itself.
    pub fn fingerprint(&self) -> String {
        let adds: Vec<String> = self
            .steps_add
            .iter()
            .map(|s| {
                format!(
                    "{}:{}",
                    s.capability().unwrap_or("approval"),
                    s.label.as_deref().unwrap_or("")
                )
            })
            .collect();
        format!(
            "+[{}] ~{} -{}",
            adds.join(","),
            self.steps_update.len(),
            self.steps_remove.len()
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("the patch is not a JSON object or array")]
    NotAPatch,
    #[error("the patch changes nothing: it adds, updates and removes no step")]
    Empty,
    #[error("step {index} of the patch is invalid: {reason}")]
    InvalidStep { index: usize, reason: String },
    #[error("unknown status {0:?}")]
    UnknownStatus(String),
    #[error("step {0:?} does not exist in the plan")]
    UnknownStep(String),
    #[error("step id {0:?} is used twice")]
    DuplicateId(String),
    #[error("step {step:?} depends on {missing:?}, which is not in the plan")]
    MissingDependency { step: String, missing: String },
    #[error("the plan's dependencies form a cycle through {0:?}")]
    Cycle(String),
    #[error("step {step:?} is {status:?} and cannot be {change}")]
    Forbidden {
        step: String,
        status: StepStatus,
        change: String,
    },
}

/// Reads a status as LLMs write it.
pub fn parse_status(raw: &str) -> Result<StepStatus, PatchError> {
    let key: String = raw
        .trim()
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    Ok(match key.as_str() {
        "pending" | "todo" | "queued" | "notstarted" | "planned" | "open" | "new" => {
            StepStatus::Pending
        }
        "inprogress" | "running" | "doing" | "active" | "started" | "wip" => StepStatus::InProgress,
        "done" | "complete" | "completed" | "finished" | "success" | "succeeded" | "ok" => {
            StepStatus::Done
        }
        "skipped" | "skip" | "cancelled" | "canceled" | "dropped" | "notneeded" => {
            StepStatus::Skipped
        }
        "failed" | "fail" | "error" | "errored" => StepStatus::Failed,
        _ => return Err(PatchError::UnknownStatus(raw.to_owned())),
    })
}

/// Maps the many names LLMs give a specialist onto the capability ids; unknown names are kept
/// (lowercased) so the engine can report them as a missing capability.
pub fn canonical_capability(raw: &str) -> String {
    let key = raw.trim().to_ascii_lowercase().replace(['-', ' '], "_");
    match key.as_str() {
        "strategy" | "strategist" | "research" | "researcher" | "analysis" | "analyst"
        | "planner_strategy" => STRATEGY_CAPABILITY.into(),
        "generation" | "generator" | "writer" | "write" | "writing" | "copywriter" | "draft"
        | "drafting" | "content" | "author" => GENERATION_CAPABILITY.into(),
        "qa" | "quality" | "critic" | "review" | "reviewer" | "quality_assurance" | "check"
        | "checker" | "evaluator" => QA_CAPABILITY.into(),
        "finalize" | "finalise" | "final" | "finalizer" | "finish" => FINALIZE_CAPABILITY.into(),
        _ => key,
    }
}

/// Guesses the capability of a step given only as text.
fn capability_from_text(text: &str) -> Option<String> {
    let t = text.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| t.contains(w));
    if has(&["finaliz", "finalis", "assemble the final", "deliver"]) {
        Some(FINALIZE_CAPABILITY.into())
    } else if has(&["review", "qa", "quality", "check", "critique", "evaluate"]) {
        Some(QA_CAPABILITY.into())
    } else if has(&["write", "draft", "generat", "compose", "revise", "rewrite"]) {
        Some(GENERATION_CAPABILITY.into())
    } else if has(&[
        "strateg", "research", "analy", "audience", "plan the", "outline",
    ]) {
        Some(STRATEGY_CAPABILITY.into())
    } else {
        None
    }
}

fn first<'a>(obj: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter()
        .find_map(|k| obj.get(*k))
        .filter(|v| !v.is_null())
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn text_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items.iter().filter_map(as_text).collect(),
        Some(other) => as_text(other).into_iter().collect(),
        None => Vec::new(),
    }
}

const ADD_KEYS: &[&str] = &[
    "stepsAdd",
    "steps_add",
    "add",
    "steps",
    "addSteps",
    "add_steps",
    "newSteps",
    "new_steps",
];
const UPDATE_KEYS: &[&str] = &[
    "stepsUpdate",
    "steps_update",
    "update",
    "updates",
    "updateSteps",
    "update_steps",
];
const REMOVE_KEYS: &[&str] = &[
    "stepsRemove",
    "steps_remove",
    "remove",
    "delete",
    "removeSteps",
    "remove_steps",
];

/// Ids for new steps: `s<N>`, never reusing one the plan (or the patch) already has.
struct IdGen {
    taken: HashSet<String>,
    /// Ids the steps being read name themselves; generated ids avoid them too.
    reserved: HashSet<String>,
    next: u32,
}

impl IdGen {
    fn new(existing: &[String]) -> Self {
        let next = existing
            .iter()
            .filter_map(|id| id.strip_prefix('s').and_then(|n| n.parse::<u32>().ok()))
            .max()
            .unwrap_or(0)
            + 1;
        Self {
            taken: existing.iter().cloned().collect(),
            reserved: HashSet::new(),
            next,
        }
    }
    fn fresh(&mut self) -> String {
        loop {
            let id = format!("s{}", self.next);
            self.next += 1;
            if !self.reserved.contains(&id) && self.taken.insert(id.clone()) {
                return id;
            }
        }
    }
}

/// Turns what a planner wrote into a canonical [`PlanPatch`]. Accepts `stepsAdd` and its aliases
/// (`add`, `steps`, ...), steps given as plain strings, JSON-Patch style operation arrays,
/// wrappers (`{"patch": ...}`, `{"plan": ...}`), and status synonyms. New steps get fresh ids;
/// a dependency may name a step by id, by label, or by its 1-based position among the new
/// steps. An empty patch is refused.
pub fn normalize_patch(raw: &Value, existing_ids: &[String]) -> Result<PlanPatch, PatchError> {
    let mut ids = IdGen::new(existing_ids);
    let patch = match raw {
        Value::Array(items) if items.iter().any(|i| i.get("op").is_some()) => {
            from_json_patch(items, &mut ids)?
        }
        Value::Array(items) => PlanPatch {
            steps_add: new_steps(items, &mut ids)?,
            ..PlanPatch::default()
        },
        Value::Object(obj) => {
            if let Some(inner) = first(obj, &["patch", "planPatch", "plan_patch", "plan"])
                && (inner.is_object() || inner.is_array())
            {
                return normalize_patch(inner, existing_ids);
            }
            from_object(obj, &mut ids)?
        }
        _ => return Err(PatchError::NotAPatch),
    };
    if patch.is_empty() {
        return Err(PatchError::Empty);
    }
    Ok(patch)
}

fn from_object(obj: &Map<String, Value>, ids: &mut IdGen) -> Result<PlanPatch, PatchError> {
    let steps_add = match first(obj, ADD_KEYS) {
        Some(Value::Array(items)) => new_steps(items, ids)?,
        Some(single @ (Value::Object(_) | Value::String(_))) => {
            new_steps(std::slice::from_ref(single), ids)?
        }
        _ => Vec::new(),
    };
    let mut steps_update = Vec::new();
    if let Some(Value::Array(items)) = first(obj, UPDATE_KEYS) {
        for (index, item) in items.iter().enumerate() {
            let Value::Object(u) = item else {
                return Err(PatchError::InvalidStep {
                    index,
                    reason: "an update must be an object with an id".into(),
                });
            };
            let id = first(u, &["id", "stepId", "step_id", "step"])
                .and_then(as_text)
                .ok_or_else(|| PatchError::InvalidStep {
                    index,
                    reason: "an update needs an id".into(),
                })?;
            let status = first(u, &["status", "state"])
                .and_then(Value::as_str)
                .map(parse_status)
                .transpose()?;
            let note = first(u, &["note", "notes", "reason", "comment"]).and_then(as_text);
            steps_update.push(StepUpdate { id, status, note });
        }
    }
    let steps_remove = match first(obj, REMOVE_KEYS) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| match i {
                Value::Object(o) => first(o, &["id", "stepId", "step_id"]).and_then(as_text),
                other => as_text(other),
            })
            .collect(),
        Some(other) => as_text(other).into_iter().collect(),
        None => Vec::new(),
    };
    let note = first(obj, &["note", "reason", "rationale", "summary"]).and_then(as_text);
    Ok(PlanPatch {
        steps_add,
        steps_update,
        steps_remove,
        note,
    })
}

fn from_json_patch(ops: &[Value], ids: &mut IdGen) -> Result<PlanPatch, PatchError> {
    let mut adds = Vec::new();
    let mut patch = PlanPatch::default();
    for (index, op) in ops.iter().enumerate() {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or_default();
        let path = op.get("path").and_then(Value::as_str).unwrap_or_default();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let target = segments
            .get(1)
            .copied()
            .filter(|s| !s.is_empty() && *s != "-");
        match kind {
            "add" => match op.get("value") {
                Some(Value::Array(items)) => adds.extend(items.iter().cloned()),
                Some(v) => adds.push(v.clone()),
                None => {
                    return Err(PatchError::InvalidStep {
                        index,
                        reason: "an add operation needs a value".into(),
                    });
                }
            },
            "remove" => {
                let id = target.ok_or_else(|| PatchError::InvalidStep {
                    index,
                    reason: format!("cannot tell which step {path:?} removes"),
                })?;
                patch.steps_remove.push(id.to_owned());
            }
            "replace" => {
                let id = target.ok_or_else(|| PatchError::InvalidStep {
                    index,
                    reason: format!("cannot tell which step {path:?} changes"),
                })?;
                let field = segments.get(2).copied().unwrap_or("status");
                let value = op.get("value").and_then(as_text).unwrap_or_default();
                let mut update = StepUpdate {
                    id: id.to_owned(),
                    status: None,
                    note: None,
                };
                match field {
                    "status" | "state" => update.status = Some(parse_status(&value)?),
                    "note" | "notes" => update.note = Some(value),
                    other => {
                        return Err(PatchError::InvalidStep {
                            index,
                            reason: format!("field {other:?} cannot be replaced"),
                        });
                    }
                }
                patch.steps_update.push(update);
            }
            other => {
                return Err(PatchError::InvalidStep {
                    index,
                    reason: format!("unsupported operation {other:?}"),
                });
            }
        }
    }
    patch.steps_add = new_steps(&adds, ids)?;
    Ok(patch)
}

fn new_steps(items: &[Value], ids: &mut IdGen) -> Result<Vec<PlanStep>, PatchError> {
    ids.reserved = items
        .iter()
        .filter_map(|i| i.as_object())
        .filter_map(|o| first(o, &["id", "stepId", "step_id"]).and_then(as_text))
        .collect();
    // First pass: ids and labels, so dependencies can name a step by label or position.
    let steps = items
        .iter()
        .enumerate()
        .map(|(index, item)| new_step(index, item, ids))
        .collect::<Result<Vec<_>, _>>()?;
    let by_label: HashMap<String, String> = steps
        .iter()
        .filter_map(|s| {
            s.label
                .as_ref()
                .map(|l| (l.to_ascii_lowercase(), s.id.clone()))
        })
        .collect();
    let own_ids: Vec<String> = steps.iter().map(|s| s.id.clone()).collect();
    let mut steps = steps;
    for step in &mut steps {
        step.depends_on = std::mem::take(&mut step.depends_on)
            .into_iter()
            .map(|d| {
                if own_ids.contains(&d) {
                    return d;
                }
                if let Some(id) = by_label.get(&d.to_ascii_lowercase()) {
                    return id.clone();
                }
                match d.parse::<usize>() {
                    Ok(n) if n >= 1 && n <= own_ids.len() => own_ids[n - 1].clone(),
                    _ => d,
                }
            })
            .collect();
    }
    Ok(steps)
}

fn new_step(index: usize, item: &Value, ids: &mut IdGen) -> Result<PlanStep, PatchError> {
    let invalid = |reason: &str| PatchError::InvalidStep {
        index,
        reason: reason.to_owned(),
    };
    match item {
        Value::String(text) if !text.trim().is_empty() => {
            let capability = capability_from_text(text).ok_or_else(|| {
                invalid("its text names no capability (research, write, review, finalize)")
            })?;
            let (capability, action) = split_finalize(Some(capability), None);
            Ok(PlanStep {
                id: ids.fresh(),
                capability_id: capability,
                action,
                label: Some(text.trim().to_owned()),
                status: StepStatus::Pending,
                depends_on: Vec::new(),
                note: None,
                acceptance_criteria: Vec::new(),
            })
        }
        Value::Object(obj) => step_from_object(obj, ids).map_err(|e| match e {
            StepFault::Invalid(reason) => invalid(reason),
            StepFault::Patch(e) => e,
        }),
        _ => Err(invalid("a step must be an object or a non-empty string")),
    }
}

/// Why an object could not become a step: a reason about this step, or a patch-wide error.
enum StepFault {
    Invalid(&'static str),
    Patch(PatchError),
}

impl From<PatchError> for StepFault {
    fn from(e: PatchError) -> Self {
        StepFault::Patch(e)
    }
}

/// A step written as an object, under any of the field names planners use.
fn step_from_object(obj: &Map<String, Value>, ids: &mut IdGen) -> Result<PlanStep, StepFault> {
    let label = first(
        obj,
        &["label", "title", "name", "description", "task", "summary"],
    )
    .and_then(as_text);
    let capability =
        named_capability(obj).or_else(|| label.as_deref().and_then(capability_from_text));
    let (capability, action) = split_finalize(capability, named_action(obj));
    if capability.is_none() && action.is_none() {
        return Err(StepFault::Invalid(
            "it names no capability (strategy, generation, qa) and no action (finalize, approval)",
        ));
    }
    let id = match first(obj, &["id", "stepId", "step_id"]).and_then(as_text) {
        Some(id) if ids.taken.insert(id.clone()) => id,
        Some(id) => return Err(PatchError::DuplicateId(id).into()),
        None => ids.fresh(),
    };
    let status = first(obj, &["status", "state"])
        .and_then(Value::as_str)
        .map(parse_status)
        .transpose()?
        .unwrap_or(StepStatus::Pending);
    let depends_on = text_list(first(
        obj,
        &[
            "dependsOn",
            "depends_on",
            "deps",
            "dependencies",
            "after",
            "requires",
        ],
    ));
    Ok(PlanStep {
        id,
        capability_id: capability,
        action,
        label,
        status,
        depends_on,
        note: first(obj, &["note", "notes", "rationale"]).and_then(as_text),
        acceptance_criteria: text_list(first(
            obj,
            &["acceptanceCriteria", "acceptance_criteria", "criteria"],
        )),
    })
}

/// The step's `action` field, when it names one the engine knows.
fn named_action(obj: &Map<String, Value>) -> Option<StepAction> {
    let action = first(obj, &["action"]).and_then(Value::as_str)?;
    match canonical_capability(action).as_str() {
        FINALIZE_CAPABILITY => Some(StepAction::Finalize),
        "approval" | "approve" | "checkpoint" | "human_approval" | "hitl" => {
            Some(StepAction::Approval)
        }
        _ => None,
    }
}

/// The capability the step names, under any of the field names planners use for it.
fn named_capability(obj: &Map<String, Value>) -> Option<String> {
    const FIELDS: [&str; 9] = [
        "capabilityId",
        "capability_id",
        "capability",
        "agent",
        "agentId",
        "agent_id",
        "specialist",
        "role",
        "type",
    ];
    first(obj, &FIELDS)
        .and_then(Value::as_str)
        .map(canonical_capability)
        .filter(|c| !c.is_empty())
}

/// "finalize" named as a capability is the finalize action; a step with an action runs no
/// capability.
fn split_finalize(
    capability: Option<String>,
    action: Option<StepAction>,
) -> (Option<String>, Option<StepAction>) {
    let action = action.or_else(|| {
        (capability.as_deref() == Some(FINALIZE_CAPABILITY)).then_some(StepAction::Finalize)
    });
    let capability = capability.filter(|c| c != FINALIZE_CAPABILITY && action.is_none());
    (capability, action)
}

impl Plan {
    /// The patch as it can apply to this plan, for the ids planners reuse: a step added under
    /// the id of a step not started (pending, failed, skipped) replaces that step; one added
    /// under the id of a step done or running (or of a step added earlier in the same patch)
    /// gets a fresh id, and the patch's other new steps that depended on that id depend on
    /// the new step. A patch is never refused for reusing an id.
    pub fn reconcile(&self, mut patch: PlanPatch) -> PlanPatch {
        let mut taken: Vec<String> = self.steps.iter().map(|s| s.id.clone()).collect();
        taken.extend(patch.steps_add.iter().map(|s| s.id.clone()));
        let mut ids = IdGen::new(&taken);
        let mut added: HashSet<String> = HashSet::new();
        let mut renamed: Vec<(usize, String, String)> = Vec::new();
        for (index, step) in patch.steps_add.iter_mut().enumerate() {
            let existing = self.step(&step.id).map(|s| s.status);
            let history = matches!(existing, Some(StepStatus::Done | StepStatus::InProgress));
            if history || added.contains(&step.id) {
                let fresh = ids.fresh();
                renamed.push((index, step.id.clone(), fresh.clone()));
                step.id = fresh;
            } else if existing.is_some() && !patch.steps_remove.contains(&step.id) {
                patch.steps_remove.push(step.id.clone());
            }
            added.insert(step.id.clone());
        }
        // A later step that named the reused id meant the step added under it.
        for (index, old, fresh) in renamed {
            for later in patch.steps_add.iter_mut().skip(index + 1) {
                for dep in later.depends_on.iter_mut().filter(|d| **d == old) {
                    dep.clone_from(&fresh);
                }
            }
        }
        // An update of a replaced step is the replacement's business.
        let replaced: HashSet<&String> = patch.steps_remove.iter().collect();
        let updates = std::mem::take(&mut patch.steps_update);
        patch.steps_update = updates
            .into_iter()
            .filter(|u| !(replaced.contains(&u.id) && added.contains(&u.id)))
            .collect();
        patch
    }

    /// The plan after `patch`, with version bumped; the plan is unchanged on error. Done and
    /// in-progress steps are history: a patch may not remove them or rewrite their status.
    pub fn apply_patch(&self, patch: &PlanPatch) -> Result<Plan, PatchError> {
        if patch.is_empty() {
            return Err(PatchError::Empty);
        }
        let mut next = self.clone();
        for id in &patch.steps_remove {
            let step = next
                .step(id)
                .ok_or_else(|| PatchError::UnknownStep(id.clone()))?;
            if matches!(step.status, StepStatus::Done | StepStatus::InProgress) {
                return Err(PatchError::Forbidden {
                    step: id.clone(),
                    status: step.status,
                    change: "removed".into(),
                });
            }
            next.steps.retain(|s| &s.id != id);
        }
        for update in &patch.steps_update {
            let step = next
                .step_mut(&update.id)
                .ok_or_else(|| PatchError::UnknownStep(update.id.clone()))?;
            if let Some(status) = update.status
                && status != step.status
            {
                let allowed = matches!(
                    (step.status, status),
                    (StepStatus::Pending, StepStatus::Skipped)
                        | (StepStatus::Skipped, StepStatus::Pending)
                        | (StepStatus::Failed, StepStatus::Pending)
                        | (StepStatus::Failed, StepStatus::Skipped)
                );
                if !allowed {
                    return Err(PatchError::Forbidden {
                        step: update.id.clone(),
                        status: step.status,
                        change: format!("set to {status:?} by the planner"),
                    });
                }
                step.status = status;
            }
            if let Some(note) = &update.note {
                step.note = Some(note.clone());
            }
        }
        for step in &patch.steps_add {
            if next.step(&step.id).is_some() {
                return Err(PatchError::DuplicateId(step.id.clone()));
            }
            let mut step = step.clone();
            // A planner cannot declare work done that nobody did.
            if matches!(
                step.status,
                StepStatus::Done | StepStatus::InProgress | StepStatus::Failed
            ) {
                step.status = StepStatus::Pending;
            }
            next.steps.push(step);
        }
        let known: BTreeSet<&str> = next.steps.iter().map(|s| s.id.as_str()).collect();
        for step in &next.steps {
            if let Some(missing) = step.depends_on.iter().find(|d| !known.contains(d.as_str())) {
                return Err(PatchError::MissingDependency {
                    step: step.id.clone(),
                    missing: missing.clone(),
                });
            }
        }
        if let Some(id) = find_cycle(&next) {
            return Err(PatchError::Cycle(id));
        }
        next.version = self.version + 1;
        Ok(next)
    }
}

fn find_cycle(plan: &Plan) -> Option<String> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'a>(
        plan: &'a Plan,
        id: &'a str,
        marks: &mut HashMap<&'a str, Mark>,
    ) -> Option<String> {
        match marks.get(id) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => return Some(id.to_owned()),
            None => {}
        }
        marks.insert(id, Mark::Visiting);
        if let Some(step) = plan.step(id) {
            for dep in &step.depends_on {
                if let Some(found) = visit(plan, dep, marks) {
                    return Some(found);
                }
            }
        }
        marks.insert(id, Mark::Done);
        None
    }
    let mut marks = HashMap::new();
    plan.steps
        .iter()
        .find_map(|s| visit(plan, &s.id, &mut marks))
}
