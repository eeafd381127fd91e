use serde_json::Value;

/// The JSON value in a model's reply: the whole reply, or the part inside a code fence, or the
/// span from the first `{`/`[` to the last `}`/`]`.
pub fn extract_json(reply: &str) -> Result<Value, String> {
    let trimmed = reply.trim();
    if let Ok(v) = serde_json::from_str(trimmed) {
        return Ok(v);
    }
    let unfenced = trimmed
        .split("```")
        .nth(1)
        .map(|block| block.trim_start_matches("json").trim())
        .unwrap_or(trimmed);
    if let Ok(v) = serde_json::from_str(unfenced) {
        return Ok(v);
    }
    let start = unfenced.find(['{', '[']);
    let end = unfenced.rfind(['}', ']']);
    match (start, end) {
        (Some(s), Some(e)) if e > s => serde_json::from_str(&unfenced[s..=e])
            .map_err(|err| format!("the reply is not valid JSON: {err}")),
        _ => Err("the reply contains no JSON object".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_json_inside_prose_and_fences() {
        assert_eq!(extract_json(r#"{"a":1}"#).unwrap()["a"], 1);
        assert_eq!(
            extract_json("Sure!\n```json\n{\"a\":2}\n```\nDone.").unwrap()["a"],
            2
        );
        assert_eq!(extract_json("Here: {\"a\":3} ok").unwrap()["a"], 3);
        assert!(extract_json("no json here").is_err());
        assert!(extract_json("{broken").is_err());
    }
}
