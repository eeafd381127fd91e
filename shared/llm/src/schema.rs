//! Reply schemas as providers want them: pure transforms of the JSON Schema schemars writes.

use serde_json::{Map, Value, json};

/// What strict structured outputs requires of a name (`json_schema.name`, a Bedrock tool name).
const MAX_NAME_CHARS: usize = 64;

/// `name` with only letters, digits, `_` and `-`, at most 64 of them: a bad name would make the
/// provider refuse the whole request, and a structured call is worth more than its name.
pub(crate) fn wire_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(MAX_NAME_CHARS)
        .collect();
    if clean.is_empty() {
        "reply".to_owned()
    } else {
        clean
    }
}

/// The schema in the subset OpenAI's strict mode accepts, or None when it cannot be said there
/// without changing what the caller would parse (then the call asks for `json_object`).
///
/// Every object gets `additionalProperties: false` and lists all its properties in `required`.
/// An optional field stays as schemars wrote it: nullable when it is an `Option` (the model may
/// answer null), not nullable when it is a `#[serde(default)]` collection or value (serde turns
/// null into an error there, so the model must write a value). `oneOf` becomes `anyOf`, `const`
/// a one-value `enum`. Keywords beyond the structure (`$schema`, `title`, `format`, `default`,
/// bounds, patterns, ...) are dropped: compatible servers disagree on which they accept, and the
/// caller checks the reply anyway. `$ref` keeps no siblings, which strict mode refuses.
/// None for what strict mode cannot express: a root that is not an object, an open map or any
/// value (`true`, `{}`), tuples and intersections.
pub(crate) fn strict_schema(schema: &Value) -> Option<Value> {
    if schema.get("type") != Some(&json!("object")) {
        return None;
    }
    strict_node(schema)
}

fn strict_node(node: &Value) -> Option<Value> {
    // `true` and `false` accept anything or nothing: strict mode can say neither.
    let Value::Object(map) = node else {
        return None;
    };
    if let Some(target) = map.get("$ref") {
        return Some(json!({ "$ref": target }));
    }
    let mut out = Map::new();
    for (key, value) in map {
        match key.as_str() {
            "type" | "enum" | "description" => {
                out.insert(key.clone(), value.clone());
            }
            "const" => {
                out.entry("enum").or_insert_with(|| json!([value]));
            }
            "properties" | "$defs" | "definitions" => {
                out.insert(key.clone(), Value::Object(strict_map(value)?));
            }
            "items" => {
                out.insert(key.clone(), strict_node(value)?);
            }
            // Disjoint alternatives (all schemars writes) accept the same under either.
            "anyOf" | "oneOf" if !out.contains_key("anyOf") => {
                out.insert("anyOf".to_owned(), strict_list(value)?);
            }
            // Closed already: `required` and `additionalProperties` are rewritten below.
            "additionalProperties" | "unevaluatedProperties" if value == &json!(false) => {}
            "required" => {}
            // Open maps, tuples, intersections: dropping them would change the shape.
            "anyOf"
            | "oneOf"
            | "additionalProperties"
            | "unevaluatedProperties"
            | "allOf"
            | "patternProperties"
            | "prefixItems"
            | "dependentSchemas" => return None,
            _ => {}
        }
    }
    close_object(&mut out)?;
    let constrained = ["type", "enum", "anyOf"]
        .iter()
        .any(|k| out.contains_key(*k));
    constrained.then_some(Value::Object(out))
}

/// An object node gets all its properties required and no others allowed; an object node
/// without `properties` is a map of unknown keys, which strict mode cannot express.
fn close_object(node: &mut Map<String, Value>) -> Option<()> {
    let typed_object = match node.get("type") {
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(types)) => types.iter().any(|t| t == "object"),
        _ => false,
    };
    if !typed_object && !node.contains_key("properties") {
        return Some(());
    }
    let names: Vec<Value> = node
        .get("properties")?
        .as_object()?
        .keys()
        .map(|k| Value::String(k.clone()))
        .collect();
    node.insert("required".to_owned(), Value::Array(names));
    node.insert("additionalProperties".to_owned(), Value::Bool(false));
    Some(())
}

fn strict_map(value: &Value) -> Option<Map<String, Value>> {
    value
        .as_object()?
        .iter()
        .map(|(k, v)| Some((k.clone(), strict_node(v)?)))
        .collect()
}

fn strict_list(value: &Value) -> Option<Value> {
    value
        .as_array()?
        .iter()
        .map(strict_node)
        .collect::<Option<Vec<_>>>()
        .map(Value::Array)
}

/// The schema as a Bedrock tool's input schema: the meta keywords at the root (`$schema`,
/// `title`) go, as they do for the agents' own tools; the rest is JSON Schema Converse accepts.
pub(crate) fn tool_input_schema(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Some(root) = schema.as_object_mut() {
        root.remove("$schema");
        root.remove("title");
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What schemars 1.x writes for a planner-like reply (PlanPatch with PlanStep): `$schema`,
    /// `title`, `$defs` and `$ref`, nullable options, `default`, a `oneOf` of `const`s.
    fn schemars_plan() -> Value {
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "PlanPatch",
            "description": "A change to a plan.",
            "type": "object",
            "properties": {
                "note": {"type": ["string", "null"]},
                "stepsAdd": {"type": "array", "items": {"$ref": "#/$defs/PlanStep"}},
                "stepsRemove": {"type": "array", "items": {"type": "string"}}
            },
            "$defs": {
                "PlanStep": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "action": {"anyOf": [{"$ref": "#/$defs/StepAction"}, {"type": "null"}]},
                        "dependsOn": {"type": "array", "default": [], "items": {"type": "string"}},
                        "attempts": {"type": "integer", "format": "uint32", "minimum": 0},
                        "status": {"$ref": "#/$defs/StepStatus", "description": "Where it is."}
                    },
                    "required": ["id", "status"]
                },
                "StepAction": {"oneOf": [
                    {"description": "Assemble.", "type": "string", "const": "finalize"},
                    {"description": "Ask a person.", "type": "string", "const": "approval"}
                ]},
                "StepStatus": {"type": "string", "enum": ["pending", "done"]}
            }
        })
    }

    fn sorted(names: &Value) -> Vec<&str> {
        let mut names: Vec<&str> = names
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn a_schemars_schema_becomes_strict() {
        // GIVEN the schema schemars writes for a plan patch
        // WHEN made strict
        let strict = strict_schema(&schemars_plan()).unwrap();
        // THEN every object is closed and requires all its properties; options stay nullable
        assert_eq!(strict["additionalProperties"], false);
        assert_eq!(
            sorted(&strict["required"]),
            ["note", "stepsAdd", "stepsRemove"]
        );
        assert_eq!(
            strict["properties"]["note"]["type"],
            json!(["string", "null"])
        );
        let step = &strict["$defs"]["PlanStep"];
        assert_eq!(step["additionalProperties"], false);
        assert_eq!(
            sorted(&step["required"]),
            ["action", "attempts", "dependsOn", "id", "status"]
        );
        // AND refs, descriptions and enums stay; oneOf and const become anyOf and enum
        assert_eq!(strict["description"], "A change to a plan.");
        assert_eq!(
            strict["properties"]["stepsAdd"]["items"]["$ref"],
            "#/$defs/PlanStep"
        );
        assert_eq!(
            strict["$defs"]["StepAction"]["anyOf"][0],
            json!({"description": "Assemble.", "type": "string", "enum": ["finalize"]})
        );
        assert_eq!(
            strict["$defs"]["StepStatus"]["enum"],
            json!(["pending", "done"])
        );
        // AND the keywords strict mode refuses are gone, a $ref keeps no siblings
        assert_eq!(step["properties"]["attempts"], json!({"type": "integer"}));
        assert_eq!(
            step["properties"]["dependsOn"],
            json!({"type": "array", "items": {"type": "string"}})
        );
        assert_eq!(
            step["properties"]["status"],
            json!({"$ref": "#/$defs/StepStatus"})
        );
        for gone in ["$schema", "title"] {
            assert!(strict.get(gone).is_none(), "{gone}");
        }
    }

    #[test]
    fn open_shapes_are_not_forced_into_strict_mode() {
        // GIVEN schemas with an any-value field, a map, a tuple, an intersection, a non-object root
        let with =
            |field: Value| json!({"type": "object", "properties": {"f": field}, "required": ["f"]});
        let open = [
            with(json!(true)),
            with(json!({"description": "anything"})),
            with(json!({"type": "object", "additionalProperties": {"type": "string"}})),
            with(json!({"type": "object"})),
            with(json!({"type": "array", "prefixItems": [{"type": "string"}]})),
            with(json!({"allOf": [{"type": "string"}]})),
            json!({"type": "string"}),
            json!({"oneOf": [{"type": "object", "properties": {}}]}),
        ];
        // WHEN made strict THEN none is (closing them would make the model drop data)
        for schema in open {
            assert_eq!(strict_schema(&schema), None, "{schema}");
        }
    }

    #[test]
    fn an_already_closed_object_stays_closed() {
        // GIVEN a struct with deny_unknown_fields and no fields
        let schema = json!({"type": "object", "properties": {}, "additionalProperties": false});
        // WHEN made strict THEN it is accepted as is, with an empty required list
        assert_eq!(
            strict_schema(&schema).unwrap(),
            json!({"type": "object", "properties": {}, "required": [], "additionalProperties": false})
        );
    }

    #[test]
    fn names_are_cut_to_what_providers_accept() {
        // GIVEN names with spaces, dots, too many characters, or nothing usable
        // WHEN cleaned THEN letters, digits, _ and - remain, at most 64; never empty
        assert_eq!(wire_name("plan patch.v2"), "planpatchv2");
        assert_eq!(wire_name(&"x".repeat(80)).len(), 64);
        assert_eq!(wire_name("…"), "reply");
        assert_eq!(wire_name("qa_verdict-1"), "qa_verdict-1");
    }

    #[test]
    fn a_tool_schema_loses_only_its_meta_keywords() {
        // GIVEN a schemars schema WHEN made a tool input schema
        let schema = tool_input_schema(&schemars_plan());
        // THEN $schema and title are gone, the structure stays as written
        assert!(schema.get("$schema").is_none() && schema.get("title").is_none());
        assert_eq!(schema["$defs"], schemars_plan()["$defs"]);
        assert_eq!(schema["properties"], schemars_plan()["properties"]);
    }
}
