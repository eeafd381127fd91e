//! Plan patches: what planners write, what the normaliser makes of it, and the rules a plan
//! enforces when a patch is applied.

use orchestrator_core::patch::{PatchError, StepUpdate, normalize_patch};
use orchestrator_core::{Plan, PlanPatch, PlanStep, StepAction, StepStatus};
use serde_json::{Value, json};

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn norm(raw: Value) -> PlanPatch {
    normalize_patch(&raw, &[]).unwrap_or_else(|e| panic!("{raw} was refused: {e}"))
}

/// (id, capability, action, label) of an added step, for compact assertions.
type Added = (String, Option<String>, Option<StepAction>, Option<String>);

fn added(patch: &PlanPatch) -> Vec<Added> {
    patch
        .steps_add
        .iter()
        .map(|s| {
            (
                s.id.clone(),
                s.capability_id.clone(),
                s.action,
                s.label.clone(),
            )
        })
        .collect()
}

fn step(id: &str, capability: &str, status: StepStatus, deps: &[&str]) -> PlanStep {
    PlanStep {
        id: id.into(),
        capability_id: Some(capability.into()),
        action: None,
        label: None,
        status,
        depends_on: ids(deps),
        note: None,
        acceptance_criteria: Vec::new(),
    }
}

fn plan(steps: Vec<PlanStep>) -> Plan {
    Plan { version: 1, steps }
}

// ---- normalisation -------------------------------------------------------------------------

#[test]
fn every_add_alias_adds_the_same_step() {
    for key in [
        "stepsAdd",
        "steps_add",
        "add",
        "steps",
        "addSteps",
        "newSteps",
    ] {
        // GIVEN a planner that lists new steps under `key`
        let raw = json!({ key: [{ "capability": "strategy", "label": "Research" }] });
        // WHEN it is normalised
        let patch = normalize_patch(&raw, &[]).unwrap_or_else(|e| panic!("{key}: {e}"));
        // THEN one pending strategy step is added under a generated id
        assert_eq!(
            added(&patch),
            vec![(
                "s1".into(),
                Some("strategy".into()),
                None,
                Some("Research".into())
            )],
            "{key}"
        );
        assert_eq!(patch.steps_add[0].status, StepStatus::Pending, "{key}");
    }
}

#[test]
fn every_update_alias_updates_status_and_note() {
    for key in [
        "stepsUpdate",
        "steps_update",
        "update",
        "updates",
        "updateSteps",
        "update_steps",
    ] {
        // GIVEN updates listed under `key`, one naming its step through `stepId`
        let raw = json!({ key: [
            { "id": "s1", "status": "skipped", "note": "not needed" },
            { "stepId": "s2", "status": "pending" },
        ] });
        // WHEN normalised
        let patch =
            normalize_patch(&raw, &ids(&["s1", "s2"])).unwrap_or_else(|e| panic!("{key}: {e}"));
        // THEN both updates come through, nothing is added or removed
        assert_eq!(
            patch.steps_update,
            vec![
                StepUpdate {
                    id: "s1".into(),
                    status: Some(StepStatus::Skipped),
                    note: Some("not needed".into()),
                },
                StepUpdate {
                    id: "s2".into(),
                    status: Some(StepStatus::Pending),
                    note: None,
                },
            ],
            "{key}"
        );
        assert!(patch.steps_add.is_empty() && patch.steps_remove.is_empty());
    }
}

#[test]
fn every_remove_alias_accepts_ids_and_objects_with_an_id() {
    for key in [
        "stepsRemove",
        "steps_remove",
        "remove",
        "delete",
        "removeSteps",
        "remove_steps",
    ] {
        // GIVEN removals as a bare id and as an object with an id
        let raw = json!({ key: ["s1", { "id": "s2" }] });
        // WHEN normalised
        let patch =
            normalize_patch(&raw, &ids(&["s1", "s2"])).unwrap_or_else(|e| panic!("{key}: {e}"));
        // THEN both steps are removed
        assert_eq!(patch.steps_remove, ids(&["s1", "s2"]), "{key}");
    }
}

#[test]
fn status_synonyms_map_onto_the_five_statuses() {
    let cases = [
        ("todo", StepStatus::Pending),
        ("Not Started", StepStatus::Pending),
        ("doing", StepStatus::InProgress),
        ("in-progress", StepStatus::InProgress),
        ("completed", StepStatus::Done),
        ("DONE", StepStatus::Done),
        ("cancelled", StepStatus::Skipped),
        ("skip", StepStatus::Skipped),
        ("error", StepStatus::Failed),
        ("failed", StepStatus::Failed),
    ];
    for (word, expected) in cases {
        // GIVEN an update whose status is written `word`
        let raw = json!({ "update": [{ "id": "s1", "status": word }] });
        // WHEN normalised
        let patch = normalize_patch(&raw, &ids(&["s1"])).unwrap_or_else(|e| panic!("{word}: {e}"));
        // THEN it reads as the canonical status
        assert_eq!(patch.steps_update[0].status, Some(expected), "{word}");
    }
    // AND a word that is no status is refused, naming it
    let err = normalize_patch(
        &json!({ "update": [{ "id": "s1", "status": "banana" }] }),
        &ids(&["s1"]),
    );
    assert_eq!(err, Err(PatchError::UnknownStatus("banana".into())));
}

#[test]
fn capability_synonyms_map_onto_the_capability_ids() {
    // GIVEN steps naming their specialist in the ways planners do
    let patch = norm(json!({ "steps": [
        { "agent": "writer" },
        { "role": "Critic" },
        { "capability": "strategist" },
        { "type": "copywriter" },
        { "specialist": "reviewer" },
        { "capabilityId": "finalizer" },
    ] }));
    // THEN each maps to strategy / generation / qa, and a finaliser becomes the finalize action
    let got: Vec<(Option<String>, Option<StepAction>)> = patch
        .steps_add
        .iter()
        .map(|s| (s.capability_id.clone(), s.action))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some("generation".into()), None),
            (Some("qa".into()), None),
            (Some("strategy".into()), None),
            (Some("generation".into()), None),
            (Some("qa".into()), None),
            (None, Some(StepAction::Finalize)),
        ]
    );
}

#[test]
fn plain_string_steps_get_a_capability_from_their_text() {
    // GIVEN steps written as plain sentences
    let patch = norm(json!({ "steps": [
        "Research the target audience",
        "Write the LinkedIn post",
        "Review the draft against the criteria",
        "Finalize the deliverable",
    ] }));
    // THEN each gets the capability its text implies, keeps the text as label, and an id
    assert_eq!(
        added(&patch),
        vec![
            (
                "s1".into(),
                Some("strategy".into()),
                None,
                Some("Research the target audience".into())
            ),
            (
                "s2".into(),
                Some("generation".into()),
                None,
                Some("Write the LinkedIn post".into())
            ),
            (
                "s3".into(),
                Some("qa".into()),
                None,
                Some("Review the draft against the criteria".into())
            ),
            (
                "s4".into(),
                None,
                Some(StepAction::Finalize),
                Some("Finalize the deliverable".into())
            ),
        ]
    );
}

#[test]
fn wrappers_and_bare_arrays_read_like_the_plain_patch() {
    let steps = json!([{ "capability": "qa", "label": "Check" }, "Write the post"]);
    let plain = norm(json!({ "stepsAdd": steps }));
    // GIVEN the same steps wrapped in {"patch":..}, {"plan":..}, or given as a bare array
    for raw in [
        json!({ "patch": { "stepsAdd": steps } }),
        json!({ "plan": { "steps": steps } }),
        json!({ "plan": steps }),
        steps.clone(),
    ] {
        // THEN the patch is the same as the unwrapped one
        assert_eq!(norm(raw.clone()), plain, "{raw}");
    }
    assert_eq!(plain.steps_add.len(), 2);
}

#[test]
fn json_patch_operations_become_adds_removes_and_status_updates() {
    // GIVEN a plan with s1 and s2, and a planner answering in JSON-Patch style
    let raw = json!([
        { "op": "add", "path": "/steps/-", "value": { "capability": "critic", "label": "QA" } },
        { "op": "remove", "path": "/steps/s1" },
        { "op": "replace", "path": "/steps/s2/status", "value": "todo" },
    ]);
    // WHEN normalised
    let patch = normalize_patch(&raw, &ids(&["s1", "s2"])).unwrap_or_else(|e| panic!("{e}"));
    // THEN the add gets a fresh id, s1 is removed and s2 goes back to pending
    assert_eq!(
        added(&patch),
        vec![("s3".into(), Some("qa".into()), None, Some("QA".into()))]
    );
    assert_eq!(patch.steps_remove, ids(&["s1"]));
    assert_eq!(
        patch.steps_update,
        vec![StepUpdate {
            id: "s2".into(),
            status: Some(StepStatus::Pending),
            note: None
        }]
    );
}

#[test]
fn generated_ids_never_collide_with_existing_or_explicit_ids() {
    // GIVEN a plan whose ids include s1, s2, s7 and a non-numbered one
    let existing = ids(&["s1", "s2", "s7", "intro"]);
    // WHEN two steps without ids are added
    let patch = normalize_patch(&json!({ "add": ["Write a post", "Review it"] }), &existing)
        .unwrap_or_else(|e| panic!("{e}"));
    // THEN they get ids after the highest existing one
    let new: Vec<&str> = patch.steps_add.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(new, vec!["s8", "s9"]);

    // GIVEN a patch where a step without id comes before one that names its id "s2"
    let raw = json!({ "add": [
        { "capability": "generation" },
        { "id": "s2", "capability": "qa" },
    ] });
    // WHEN normalised against a plan holding s1
    let patch = normalize_patch(&raw, &ids(&["s1"])).unwrap_or_else(|e| panic!("{e}"));
    // THEN the explicit id is kept and the generated one avoids it
    let new: Vec<&str> = patch.steps_add.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(new[1], "s2");
    assert!(!["s1", "s2"].contains(&new[0]), "generated id {new:?}");
    // AND an explicit id already in the plan is refused
    assert_eq!(
        normalize_patch(
            &json!({ "add": [{ "id": "s1", "capability": "qa" }] }),
            &ids(&["s1"])
        ),
        Err(PatchError::DuplicateId("s1".into()))
    );
}

#[test]
fn dependencies_resolve_by_id_by_label_and_by_position() {
    // GIVEN a plan holding s1, and new steps depending on it by id, on each other by label
    // (any case) and by 1-based position among the new steps
    let raw = json!({ "steps": [
        { "label": "Research", "capability": "strategy", "dependsOn": ["s1"] },
        { "label": "Draft", "agent": "writer", "depends_on": ["research"] },
        { "label": "Review", "role": "critic", "after": [2] },
        { "label": "Wrap up", "action": "finalize", "dependencies": ["Review", 1] },
    ] });
    // WHEN normalised
    let patch = normalize_patch(&raw, &ids(&["s1"])).unwrap_or_else(|e| panic!("{e}"));
    // THEN every dependency names a step id
    let deps: Vec<(&str, Vec<String>)> = patch
        .steps_add
        .iter()
        .map(|s| (s.id.as_str(), s.depends_on.clone()))
        .collect();
    assert_eq!(
        deps,
        vec![
            ("s2", ids(&["s1"])),
            ("s3", ids(&["s2"])),
            ("s4", ids(&["s3"])),
            ("s5", ids(&["s4", "s2"])),
        ]
    );
    // AND the result applies to the plan
    let base = plan(vec![step("s1", "strategy", StepStatus::Done, &[])]);
    assert!(base.apply_patch(&patch).is_ok());
}

#[test]
fn a_patch_that_changes_nothing_is_refused() {
    // GIVEN patches that add, update and remove nothing
    for raw in [
        json!({}),
        json!({ "steps": [] }),
        json!({ "note": "looks fine as it is" }),
        json!([]),
        json!({ "patch": {} }),
    ] {
        // THEN normalisation refuses them as empty
        assert_eq!(normalize_patch(&raw, &[]), Err(PatchError::Empty), "{raw}");
    }
    // AND something that is no patch at all is refused as such
    assert_eq!(
        normalize_patch(&json!("add a step"), &[]),
        Err(PatchError::NotAPatch)
    );
    // AND an empty patch cannot be applied either
    assert_eq!(
        Plan::default().apply_patch(&PlanPatch::default()),
        Err(PatchError::Empty)
    );
}

#[test]
fn a_step_with_no_capability_is_refused() {
    // GIVEN steps from which no capability or action can be told
    for raw in [
        json!({ "steps": [{ "label": "Do the thing" }] }),
        json!({ "steps": [{ "capability": "" }] }),
        json!({ "steps": ["Write the post", "Create the image"] }),
    ] {
        // THEN the patch is refused, pointing at the step
        match normalize_patch(&raw, &[]) {
            Err(PatchError::InvalidStep { .. }) => {}
            other => panic!("{raw} gave {other:?}"),
        }
    }
    // AND the error says which step is wrong
    let err = normalize_patch(
        &json!({ "steps": ["Write the post", "Create the image"] }),
        &[],
    );
    assert!(matches!(err, Err(PatchError::InvalidStep { index: 1, .. })));
}

// ---- applying a patch ------------------------------------------------------------------

#[test]
fn applying_a_patch_bumps_the_version_and_leaves_the_original_alone() {
    // GIVEN a plan at version 1
    let base = plan(vec![step("s1", "strategy", StepStatus::Done, &[])]);
    let patch = normalize_patch(
        &json!({ "add": [{ "capability": "generation", "dependsOn": ["s1"] }] }),
        &ids(&["s1"]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // WHEN a patch adds a step
    let next = base.apply_patch(&patch).unwrap_or_else(|e| panic!("{e}"));
    // THEN the new plan is version 2 with the step appended, and the old plan is unchanged
    assert_eq!(next.version, 2);
    assert_eq!(next.steps.len(), 2);
    assert_eq!(next.steps[1].depends_on, ids(&["s1"]));
    assert_eq!(base.version, 1);
    assert_eq!(base.steps.len(), 1);
}

#[test]
fn patches_naming_unknown_or_duplicate_steps_are_refused() {
    let base = plan(vec![step("s1", "strategy", StepStatus::Pending, &[])]);
    // GIVEN an update of a step that does not exist
    let update = norm(json!({ "update": [{ "id": "ghost", "status": "skipped" }] }));
    assert_eq!(
        base.apply_patch(&update),
        Err(PatchError::UnknownStep("ghost".into()))
    );
    // GIVEN a removal of a step that does not exist
    let remove = norm(json!({ "remove": ["ghost"] }));
    assert_eq!(
        base.apply_patch(&remove),
        Err(PatchError::UnknownStep("ghost".into()))
    );
    // GIVEN an added step reusing an id in the plan
    let dup = norm(json!({ "add": [{ "id": "s1", "capability": "qa" }] }));
    assert_eq!(
        base.apply_patch(&dup),
        Err(PatchError::DuplicateId("s1".into()))
    );
}

#[test]
fn dependencies_must_exist_and_must_not_form_a_cycle() {
    let base = plan(vec![
        step("s1", "strategy", StepStatus::Pending, &[]),
        step("s2", "generation", StepStatus::Pending, &["s1"]),
    ]);
    // GIVEN a new step depending on a step nobody has
    let missing = norm(json!({ "add": [{ "id": "s3", "capability": "qa", "dependsOn": ["s9"] }] }));
    assert_eq!(
        base.apply_patch(&missing),
        Err(PatchError::MissingDependency {
            step: "s3".into(),
            missing: "s9".into()
        })
    );
    // GIVEN a removal of a step another one still depends on
    let orphaning = norm(json!({ "remove": ["s1"] }));
    assert_eq!(
        base.apply_patch(&orphaning),
        Err(PatchError::MissingDependency {
            step: "s2".into(),
            missing: "s1".into()
        })
    );
    // GIVEN two new steps waiting on each other
    let cycle = norm(json!({ "add": [
        { "id": "a", "capability": "qa", "dependsOn": ["b"] },
        { "id": "b", "capability": "qa", "dependsOn": ["a"] },
    ] }));
    assert!(matches!(
        base.apply_patch(&cycle),
        Err(PatchError::Cycle(_))
    ));
}

#[test]
fn history_cannot_be_rewritten_by_the_planner() {
    let base = plan(vec![
        step("s1", "strategy", StepStatus::Done, &[]),
        step("s2", "generation", StepStatus::Pending, &["s1"]),
        step("s3", "qa", StepStatus::Failed, &[]),
    ]);
    // GIVEN a removal of a done step: refused
    assert!(matches!(
        base.apply_patch(&norm(json!({ "remove": ["s1"] }))),
        Err(PatchError::Forbidden { ref step, status: StepStatus::Done, .. }) if step == "s1"
    ));
    // GIVEN the planner declaring a pending step done: refused
    assert!(matches!(
        base.apply_patch(&norm(json!({ "update": [{ "id": "s2", "status": "completed" }] }))),
        Err(PatchError::Forbidden { ref step, status: StepStatus::Pending, .. }) if step == "s2"
    ));
    // GIVEN a new step that claims to be done already: it is added as pending
    let next = base
        .apply_patch(&norm(
            json!({ "add": [{ "id": "s4", "capability": "qa", "status": "done" }] }),
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(next.step("s4").map(|s| s.status), Some(StepStatus::Pending));
    // GIVEN a failed step sent back to pending for another try: allowed
    let retried = base
        .apply_patch(&norm(
            json!({ "update": [{ "id": "s3", "status": "todo" }] }),
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        retried.step("s3").map(|s| s.status),
        Some(StepStatus::Pending)
    );
}

#[test]
fn a_patch_reusing_an_id_is_reconciled_never_refused() {
    // GIVEN a plan with a done step, a failed one and a pending one that depends on it
    let before = plan(vec![
        step("s1", "strategy", StepStatus::Done, &[]),
        step("s2", "generation", StepStatus::Failed, &["s1"]),
        step("s3", "qa", StepStatus::Pending, &["s2"]),
    ]);
    // WHEN a replan adds s1 again (done), s2 again (failed), and a new step on "s1"
    let patch = PlanPatch {
        steps_add: vec![
            step("s1", "strategy", StepStatus::Pending, &[]),
            step("s2", "generation", StepStatus::Pending, &["s1"]),
            step("s9", "qa", StepStatus::Pending, &["s1", "s2"]),
        ],
        ..PlanPatch::default()
    };
    let patch = before.reconcile(patch);
    let after = before.apply_patch(&patch).unwrap();

    // THEN the done s1 stays as it was and the new one gets a fresh id, which the later
    // steps of the patch depend on
    let fresh = &patch.steps_add[0].id;
    assert!(
        !["s1", "s2", "s3", "s9"].contains(&fresh.as_str()),
        "{fresh}"
    );
    assert_eq!(after.step("s1").unwrap().status, StepStatus::Done);
    assert_eq!(after.step("s2").unwrap().depends_on, vec![fresh.clone()]);
    assert_eq!(
        after.step("s9").unwrap().depends_on,
        vec![fresh.clone(), "s2".to_owned()]
    );
    // AND the failed s2 is replaced by the new one, pending, its dependent kept
    assert_eq!(after.step("s2").unwrap().status, StepStatus::Pending);
    assert_eq!(after.step("s3").unwrap().depends_on, ids(&["s2"]));
    assert_eq!(after.steps.len(), 5);

    // AND the same id twice in one patch: the second is renamed
    let twice = PlanPatch {
        steps_add: vec![
            step("s7", "qa", StepStatus::Pending, &[]),
            step("s7", "qa", StepStatus::Pending, &[]),
        ],
        ..PlanPatch::default()
    };
    let twice = before.reconcile(twice);
    assert_ne!(twice.steps_add[0].id, twice.steps_add[1].id);
    assert!(before.apply_patch(&twice).is_ok());
}
