//! The text protocol, for models that cannot call tools natively (the small local model): the
//! tools are described in the prompt, the model answers in a strict format, and a forgiving
//! parser reads what it wrote — code fences, stray quotes, single-quoted or unclosed JSON, a
//! tool named without its module — and says precisely what was wrong when it cannot.
//!
//! ```text
//! Action: memory.recall
//! Action Input: {"query": "favourite editor"}
//! ```
//! or
//! ```text
//! Final Answer: Your favourite editor is Helix.
//! ```

use lotus_providers::ToolSpec;
use serde_json::{Map, Value};

/// What a reply in the text protocol says.
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed {
    /// The answer (the text after `Final Answer:`, or the whole reply when it follows no format).
    Answer(String),
    /// A tool call: the tool's name as listed, and its arguments.
    Call {
        /// The thought before the call, if any.
        thought: String,
        /// The tool, as named in the list.
        name: String,
        /// The arguments object.
        arguments: Value,
    },
    /// A call that cannot be used, and why (sent back to the model to repair).
    Malformed(String),
}

/// The instructions that teach the protocol, with the tools listed (in the order given).
pub fn instructions(tools: &[ToolSpec]) -> String {
    let mut s = String::from(
        "You can use tools. To use one, reply with exactly two lines and nothing else:\n\
         Action: <tool name>\n\
         Action Input: <the arguments as one JSON object>\n\
         You will then get an Observation with the result. When you know the answer, reply with:\n\
         Final Answer: <your answer>\n\nTools:\n",
    );
    for t in tools {
        let args = t
            .input_schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| {
                p.iter()
                    .map(|(k, v)| {
                        let ty = v.get("type").and_then(Value::as_str).unwrap_or("any");
                        format!("{k}: {ty}")
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        s.push_str(&format!("- {}({args}): {}\n", t.name, t.description));
    }
    s
}

/// Finds `marker` (ASCII, case-insensitive) in `text`: the byte offset just after it.
fn after(text: &str, marker: &str) -> Option<usize> {
    let m = marker.as_bytes();
    text.as_bytes()
        .windows(m.len())
        .position(|w| w.eq_ignore_ascii_case(m))
        .map(|i| i + m.len())
}

/// The first balanced `{…}` in `s` (strings respected); unclosed braces are closed at the end.
fn json_object(s: &str) -> Option<String> {
    let start = s.find('{')?;
    let mut depth = 0usize;
    let mut in_str: Option<char> = None;
    let mut escaped = false;
    for (i, c) in s[start..].char_indices() {
        if let Some(q) = in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                in_str = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => in_str = Some(c),
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(s[start..start + i + 1].to_owned());
                }
            }
            _ => {}
        }
    }
    // Unclosed: close what is open (a model that stopped early).
    let mut out = s[start..].trim_end().to_owned();
    if in_str.is_some() {
        out.push('"');
    }
    out.push_str(&"}".repeat(depth));
    Some(out)
}

/// Parses a JSON object, repairing what small models get wrong: single quotes, trailing
/// commas, Python's `True`/`False`/`None`.
pub fn lenient_object(s: &str) -> Result<Map<String, Value>, String> {
    let raw = json_object(s).ok_or("no JSON object")?;
    let attempt = |t: &str| serde_json::from_str::<Value>(t).ok();
    let repaired = || {
        let mut t = String::with_capacity(raw.len());
        let mut in_dq = false;
        let mut prev = '\0';
        for c in raw.chars() {
            match c {
                '"' if prev != '\\' => {
                    in_dq = !in_dq;
                    t.push(c);
                }
                '\'' if !in_dq => t.push('"'),
                _ => t.push(c),
            }
            prev = c;
        }
        let t = t
            .replace(",}", "}")
            .replace(", }", "}")
            .replace(",]", "]")
            .replace(": True", ": true")
            .replace(": False", ": false")
            .replace(": None", ": null");
        attempt(&t)
    };
    match attempt(&raw).or_else(repaired) {
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(format!("`{raw}` is not a JSON object")),
        None => Err(format!("`{raw}` is not valid JSON")),
    }
}

/// Which listed tool `written` means: exact, then ignoring case, quotes and `__` for `.`, then
/// the only tool whose own name (after the module) it is.
pub fn resolve<'a>(written: &str, tools: &'a [ToolSpec]) -> Result<&'a str, String> {
    let w = written
        .trim()
        .trim_matches(['`', '"', '\'', '*', '[', ']', '(', ')', ':'])
        .trim()
        .replace("__", ".");
    if w.is_empty() {
        return Err("the Action line names no tool".into());
    }
    if let Some(t) = tools.iter().find(|t| t.name == w) {
        return Ok(&t.name);
    }
    if let Some(t) = tools.iter().find(|t| t.name.eq_ignore_ascii_case(&w)) {
        return Ok(&t.name);
    }
    let short: Vec<&ToolSpec> = tools
        .iter()
        .filter(|t| {
            t.name
                .rsplit('.')
                .next()
                .is_some_and(|s| s.eq_ignore_ascii_case(&w))
        })
        .collect();
    match short.as_slice() {
        [one] => return Ok(&one.name),
        [] => {}
        several => {
            let names: Vec<&str> = several.iter().map(|t| t.name.as_str()).collect();
            return Err(format!(
                "`{w}` could be any of {}; name one of them",
                names.join(", ")
            ));
        }
    }
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    Err(format!(
        "there is no tool `{w}`; the tools are: {}",
        names.join(", ")
    ))
}

/// Reads a reply in the text protocol.
pub fn parse(reply: &str, tools: &[ToolSpec]) -> Parsed {
    let text = reply.trim();
    let action = after(text, "action:");
    let answer = after(text, "final answer:");
    // A final answer before any action (or with none) ends the task.
    if let Some(a) = answer
        && action.is_none_or(|x| a < x)
    {
        return Parsed::Answer(clean(&text[a..]));
    }
    if let Some(a) = action {
        let thought = text[..a - "action:".len()].trim();
        let thought = thought
            .strip_prefix("Thought:")
            .or_else(|| thought.strip_prefix("thought:"))
            .unwrap_or(thought)
            .trim()
            .to_owned();
        let rest = &text[a..];
        let line_end = rest.find('\n').unwrap_or(rest.len());
        let mut name_part = rest[..line_end].trim();
        // `Action: recall {"query": …}` on one line.
        if let Some(b) = name_part.find('{') {
            name_part = name_part[..b].trim();
        }
        let name = match resolve(name_part, tools) {
            Ok(n) => n.to_owned(),
            Err(e) => return Parsed::Malformed(e),
        };
        let input = after(rest, "action input:").map_or(rest, |i| &rest[i..]);
        let arguments = if input.contains('{') {
            match lenient_object(input) {
                Ok(m) => Value::Object(m),
                Err(e) => {
                    return Parsed::Malformed(format!("the Action Input of `{name}`: {e}"));
                }
            }
        } else {
            Value::Object(Map::new())
        };
        return Parsed::Call {
            thought,
            name,
            arguments,
        };
    }
    // A bare JSON call: {"tool": "…", "arguments": {…}} or {"name": …, "arguments": …}.
    if text.starts_with('{')
        && let Ok(m) = lenient_object(text)
        && let Some(name) = m
            .get("tool")
            .or_else(|| m.get("name"))
            .and_then(Value::as_str)
    {
        return match resolve(name, tools) {
            Ok(n) => Parsed::Call {
                thought: String::new(),
                name: n.to_owned(),
                arguments: m
                    .get("arguments")
                    .or_else(|| m.get("input"))
                    .cloned()
                    .unwrap_or_else(|| Value::Object(Map::new())),
            },
            Err(e) => Parsed::Malformed(e),
        };
    }
    Parsed::Answer(clean(text))
}

/// An answer without the protocol's leftovers (fences, a leading `Thought:`).
fn clean(s: &str) -> String {
    let s = s.trim().trim_matches('`').trim();
    s.strip_prefix("Thought:").unwrap_or(s).trim().to_owned()
}

/// Streams the answer part of a text-protocol reply as it arrives: a reply that opens like the
/// protocol (`Thought:`, `Action:`, a fence, a brace) is held until `Final Answer:` shows, and
/// only what follows it is passed on; any other reply is passed on as it comes.
#[derive(Default)]
pub struct AnswerFilter {
    buf: String,
    mode: Mode,
    /// Where the answer begins in a held reply, once `Final Answer:` is seen.
    answer_at: Option<usize>,
    sent: usize,
}

#[derive(Default, PartialEq)]
enum Mode {
    #[default]
    Deciding,
    Plain,
    Held,
}

const PROTOCOL_OPENINGS: [&str; 6] = [
    "thought",
    "action",
    "```",
    "{",
    "final answer",
    "observation",
];

impl AnswerFilter {
    /// Takes the next piece of the reply; returns what may be shown now.
    pub fn push(&mut self, delta: &str) -> Option<String> {
        self.buf.push_str(delta);
        if self.mode == Mode::Deciding {
            let head = self.buf.trim_start().to_ascii_lowercase();
            if PROTOCOL_OPENINGS.iter().any(|p| head.starts_with(p)) {
                self.mode = Mode::Held;
            } else if head.is_empty() || PROTOCOL_OPENINGS.iter().any(|p| p.starts_with(&head)) {
                // Could still become the protocol: wait for more.
                return None;
            } else {
                self.mode = Mode::Plain;
            }
        }
        self.release()
    }

    /// The reply is complete: whatever is still to show.
    pub fn finish(&mut self) -> Option<String> {
        if self.mode == Mode::Deciding {
            self.mode = Mode::Plain;
        }
        self.release()
    }

    fn release(&mut self) -> Option<String> {
        let start = match self.mode {
            Mode::Deciding => return None,
            Mode::Plain => 0,
            Mode::Held => match self.answer_at {
                Some(a) => a,
                None => *self.answer_at.insert(after(&self.buf, "final answer:")?),
            },
        };
        // The answer starts at its first non-blank character.
        let rest = &self.buf[start..];
        let from = self.sent.max(start + rest.len() - rest.trim_start().len());
        if from >= self.buf.len() {
            return None;
        }
        self.sent = self.buf.len();
        Some(self.buf[from..].to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools() -> Vec<ToolSpec> {
        ["memory.recall", "memory.remember", "clock.now"]
            .iter()
            .map(|n| ToolSpec {
                name: (*n).to_owned(),
                description: "d".into(),
                input_schema: json!({"type": "object", "properties": {"query": {"type": "string"}}}),
            })
            .collect()
    }

    #[test]
    fn the_strict_format_parses() {
        assert_eq!(
            parse(
                "Thought: I should look.\nAction: memory.recall\nAction Input: {\"query\": \"editor\"}",
                &tools()
            ),
            Parsed::Call {
                thought: "I should look.".into(),
                name: "memory.recall".into(),
                arguments: json!({"query": "editor"}),
            }
        );
        assert_eq!(
            parse("Final Answer: Helix.", &tools()),
            Parsed::Answer("Helix.".into())
        );
    }

    #[test]
    fn what_small_models_write_is_forgiven() {
        let call = |s: &str| match parse(s, &tools()) {
            Parsed::Call {
                name, arguments, ..
            } => (name, arguments),
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(
            call("```\nAction: `recall`\nAction Input: {'query': 'editor',}\n```"),
            ("memory.recall".into(), json!({"query": "editor"}))
        );
        assert_eq!(
            call("action: CLOCK.NOW\naction input: {}"),
            ("clock.now".into(), json!({}))
        );
        assert_eq!(
            call("Action: memory__recall {\"query\": \"unfinished"),
            ("memory.recall".into(), json!({"query": "unfinished"}))
        );
        assert_eq!(
            call("{\"tool\": \"now\", \"arguments\": {\"zone\": \"UTC\"}}"),
            ("clock.now".into(), json!({"zone": "UTC"}))
        );
        assert_eq!(
            parse("Your favourite editor is Helix.", &tools()),
            Parsed::Answer("Your favourite editor is Helix.".into())
        );
    }

    #[test]
    fn what_cannot_be_used_says_why() {
        let Parsed::Malformed(why) = parse("Action: weather\nAction Input: {}", &tools()) else {
            panic!()
        };
        assert!(
            why.contains("no tool `weather`") && why.contains("clock.now"),
            "{why}"
        );
        let Parsed::Malformed(why) =
            parse("Action: memory.recall\nAction Input: {query: [}", &tools())
        else {
            panic!()
        };
        assert!(why.contains("not valid JSON"), "{why}");
    }

    #[test]
    fn only_the_answer_is_streamed() {
        let run = |pieces: &[&str]| {
            let mut f = AnswerFilter::default();
            let mut out: String = pieces.iter().filter_map(|p| f.push(p)).collect();
            out.extend(f.finish());
            out
        };
        assert_eq!(
            run(&["Your fav", "ourite is ", "Helix."]),
            "Your favourite is Helix."
        );
        assert_eq!(
            run(&["Thought: easy.\nFinal ", "Answer: ", "Hel", "ix."]),
            "Helix."
        );
        assert_eq!(run(&["Action: clock.now\n", "Action Input: {}"]), "");
        assert_eq!(run(&["  Hi"]), "Hi");
        assert_eq!(run(&["Act", "ually, Helix."]), "Actually, Helix.");
    }
}
