//! # lotus-core
//!
//! The types every part of LOTUS shares and nothing that does I/O: [`Event`], [`Topic`] and
//! [`Pattern`], the module [`Manifest`] with its permissions, and [`ToolSpec`].
//!
//! It changes rarely and carefully: module authors, bus backends and the nucleus all build on it.

pub mod event;
pub mod manifest;
pub mod tool;
pub mod topic;

pub use event::Event;
pub use manifest::{
    HostGrant, Manifest, ManifestError, McpServer, ModuleName, Overflow, Placement, Priority,
    Runtime,
};
pub use tool::ToolSpec;
pub use topic::{Pattern, PatternToken, Topic, TopicError};

/// Re-exported so that users of [`Event::payload`] need no extra dependency.
pub use serde_json::{Value, json};

/// The causes of `e` (its `source()`, that one's source, …), not `e` itself.
pub fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(e.source(), |c| c.source())
}

/// `e` and its causes as one line: `e: cause: cause…` (what a user needs to see of an error whose
/// own message hides the reason, like a connection failure's).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    for c in causes(e) {
        // Some errors repeat their cause in their own message: say it once.
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}
