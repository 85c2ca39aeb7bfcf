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
pub use manifest::{HostGrant, Manifest, ManifestError, ModuleName, Overflow, Priority, Runtime};
pub use tool::ToolSpec;
pub use topic::{Pattern, PatternToken, Topic, TopicError};

/// Re-exported so that users of [`Event::payload`] need no extra dependency.
pub use serde_json::{Value, json};
