//! Forms on gates: the fields a gate asks for with its decision (`inputs` in a spec, `inputs` in
//! the gate's presentation) and the one check of the values a person sends ([`check_values`]),
//! which the engine applies and the pages use to read what was typed ([`read_typed`]).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Decision;

/// One field of a gate's form.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct InputField {
    /// The value's key: letters, digits and `_`.
    pub name: String,
    /// `enum`, `integer`, `number`, `text` or `boolean`.
    #[serde(rename = "type")]
    pub kind: InputKind,
    /// Shown next to the field; the name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// `enum`: the choices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<String>>,
    /// `integer` and `number`: the smallest value allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// `integer` and `number`: the largest value allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Whether approving needs a value (default: true). Rejecting or sending back never does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
}

/// What a form field holds.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "ssr", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// One of `options` (a string).
    Enum,
    /// A whole number within `min` and `max`.
    Integer,
    /// A number within `min` and `max`.
    Number,
    /// Free text (at most [`MAX_TEXT`] bytes).
    Text,
    /// Yes or no.
    Boolean,
}

wire_names!(InputKind {
    Enum => "enum",
    Integer => "integer",
    Number => "number",
    Text => "text",
    Boolean => "boolean",
});

/// The longest text a field takes.
pub const MAX_TEXT: usize = 10_000;

impl InputField {
    /// Whether approving needs a value.
    pub fn is_required(&self) -> bool {
        self.required.unwrap_or(true)
    }

    /// What the page shows next to the field.
    pub fn shown_label(&self) -> &str {
        self.label.as_deref().unwrap_or(&self.name)
    }

    /// Checks one value against this field; the message names the field.
    fn check(&self, value: &Value) -> Result<(), String> {
        let name = &self.name;
        let in_range = |number: f64| {
            if self.min.is_some_and(|min| number < min) || self.max.is_some_and(|max| number > max) {
                Err(format!("field {name:?}: {number} is outside {}", self.range()))
            } else {
                Ok(())
            }
        };
        match self.kind {
            InputKind::Enum => {
                let options = self.options.as_deref().unwrap_or_default();
                match value.as_str() {
                    Some(choice) if options.iter().any(|o| o == choice) => Ok(()),
                    _ => Err(format!("field {name:?}: {value} is not one of {}", options.join(", "))),
                }
            }
            InputKind::Integer => match value.as_i64() {
                Some(number) => in_range(number as f64),
                None => Err(format!("field {name:?}: {value} is not a whole number")),
            },
            InputKind::Number => match value.as_f64() {
                Some(number) => in_range(number),
                None => Err(format!("field {name:?}: {value} is not a number")),
            },
            InputKind::Text => match value.as_str() {
                Some(text) if text.len() <= MAX_TEXT => Ok(()),
                Some(_) => Err(format!("field {name:?}: longer than {MAX_TEXT} bytes")),
                None => Err(format!("field {name:?}: {value} is not text")),
            },
            InputKind::Boolean => match value {
                Value::Bool(_) => Ok(()),
                _ => Err(format!("field {name:?}: {value} is not true or false")),
            },
        }
    }

    /// `min`…`max` in words.
    fn range(&self) -> String {
        match (self.min, self.max) {
            (Some(min), Some(max)) => format!("{min} to {max}"),
            (Some(min), None) => format!("at least {min}"),
            (None, Some(max)) => format!("at most {max}"),
            (None, None) => "any".into(),
        }
    }
}

/// Checks the values sent with `decision` against a gate's form: every value belongs to a field
/// and fits it, and approving gives every required field a value. Answers the values as they are
/// recorded, or what is wrong, naming the field.
pub fn check_values(
    fields: &[InputField],
    values: Option<&Map<String, Value>>,
    decision: Decision,
) -> Result<Map<String, Value>, String> {
    let values = values.cloned().unwrap_or_default();
    for (name, value) in &values {
        let field = fields
            .iter()
            .find(|f| &f.name == name)
            .ok_or_else(|| format!("field {name:?}: this gate's form has no such field"))?;
        field.check(value)?;
    }
    if decision == Decision::Approve
        && let Some(missing) = fields.iter().find(|f| f.is_required() && !values.contains_key(&f.name))
    {
        return Err(format!("field {:?}: needed to approve", missing.name));
    }
    Ok(values)
}

/// A value as a page's form field typed it, read for `field`: `None` when left empty.
pub fn read_typed(field: &InputField, typed: &str) -> Result<Option<Value>, String> {
    let name = &field.name;
    let typed = typed.trim();
    if typed.is_empty() {
        return Ok(None);
    }
    let value = match field.kind {
        InputKind::Enum | InputKind::Text => Value::String(typed.to_owned()),
        InputKind::Integer => typed
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("field {name:?}: {typed:?} is not a whole number"))?,
        InputKind::Number => typed
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("field {name:?}: {typed:?} is not a number"))?,
        InputKind::Boolean => match typed {
            "true" | "on" | "yes" => Value::Bool(true),
            "false" | "off" | "no" => Value::Bool(false),
            _ => return Err(format!("field {name:?}: {typed:?} is not yes or no")),
        },
    };
    Ok(Some(value))
}

/// A page's whole form, read for the fields' types: `typed` gives what was typed into a field
/// (by name), if anything. What is left empty is left out; a box left unticked is no. The first
/// field that does not read is the error; no value at all is `None`.
pub fn read_form<'a>(
    form: &[InputField],
    typed: impl Fn(&str) -> Option<&'a str>,
) -> Result<Option<Map<String, Value>>, String> {
    let mut values = Map::new();
    for field in form {
        let value = match (field.kind, typed(&field.name)) {
            (InputKind::Boolean, None) => Some(Value::Bool(false)),
            (_, None) => None,
            (_, Some(text)) => read_typed(field, text)?,
        };
        if let Some(value) = value {
            values.insert(field.name.clone(), value);
        }
    }
    Ok((!values.is_empty()).then_some(values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn form() -> Vec<InputField> {
        serde_json::from_value(json!([
            { "name": "tone", "type": "enum", "options": ["short", "long"] },
            { "name": "max_rows", "type": "integer", "min": 1, "max": 1000 },
            { "name": "note", "type": "text", "required": false },
        ]))
        .expect("a form")
    }

    #[test]
    fn values_are_checked_against_their_fields() {
        let approve = Decision::Approve;
        // (values, decision, the verdict: Ok or the start of the message)
        let table: Vec<(Value, Decision, Result<(), &str>)> = vec![
            (json!({ "tone": "short", "max_rows": 10 }), approve, Ok(())),
            (json!({ "tone": "short", "max_rows": 1000, "note": "ok" }), approve, Ok(())),
            (
                json!({ "tone": "medium", "max_rows": 10 }),
                approve,
                Err(r#"field "tone": "medium" is not one of short, long"#),
            ),
            (json!({ "tone": "short", "max_rows": 0 }), approve, Err(r#"field "max_rows": 0 is outside 1 to 1000"#)),
            (
                json!({ "tone": "short", "max_rows": 2.5 }),
                approve,
                Err(r#"field "max_rows": 2.5 is not a whole number"#),
            ),
            (
                json!({ "tone": "short", "max_rows": "10" }),
                approve,
                Err(r#"field "max_rows": "10" is not a whole number"#),
            ),
            (json!({ "tone": "short" }), approve, Err(r#"field "max_rows": needed to approve"#)),
            (
                json!({ "tone": "short", "max_rows": 5, "colour": "red" }),
                approve,
                Err(r#"field "colour": this gate's form has no such field"#),
            ),
            (json!({ "note": 5 }), Decision::Reject, Err(r#"field "note": 5 is not text"#)),
            // Rejecting or sending back needs no value.
            (json!({}), Decision::Reject, Ok(())),
            (json!({ "note": "too long a list" }), Decision::Modify, Ok(())),
        ];
        for (values, decision, expected) in table {
            let verdict = check_values(&form(), values.as_object(), decision);
            match expected {
                Ok(()) => {
                    assert_eq!(verdict.as_ref().map(|v| Value::Object(v.clone())), Ok(&values).cloned(), "{values}")
                }
                Err(start) => assert_eq!(verdict.err().as_deref(), Some(start), "{values}"),
            }
        }
        assert_eq!(check_values(&[], None, Decision::Approve), Ok(Map::new()), "no form, nothing to send");
    }

    #[test]
    fn what_a_page_field_typed_is_read_for_its_type() {
        let fields = form();
        assert_eq!(read_typed(&fields[0], "long"), Ok(Some(json!("long"))));
        assert_eq!(read_typed(&fields[1], " 42 "), Ok(Some(json!(42))));
        assert_eq!(read_typed(&fields[1], ""), Ok(None));
        assert!(read_typed(&fields[1], "forty").is_err_and(|e| e.contains("max_rows")));
        let flag = InputField {
            name: "sure".into(),
            kind: InputKind::Boolean,
            label: None,
            options: None,
            min: None,
            max: None,
            required: None,
        };
        assert_eq!(read_typed(&flag, "on"), Ok(Some(json!(true))));
        let mut with_flag = fields.clone();
        with_flag.push(flag);
        let typed = |name: &str| match name {
            "tone" => Some("short"),
            "max_rows" => Some("7"),
            "note" => Some(""),
            _ => None,
        };
        assert_eq!(
            read_form(&with_flag, typed),
            Ok(json!({ "tone": "short", "max_rows": 7, "sure": false }).as_object().cloned())
        );
        assert!(read_form(&fields, |_| Some("x")).is_err_and(|e| e.contains("max_rows")));
    }
}
