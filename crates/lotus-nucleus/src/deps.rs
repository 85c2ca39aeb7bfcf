//! Dependency resolution: which modules can start, in which order, and why the others cannot.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use lotus_core::Manifest;
use lotus_core::manifest::Priority;

/// The outcome of resolving a set of manifests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Modules that can start, dependencies first, then by priority (critical first) and name.
    pub order: Vec<String>,
    /// Modules that cannot start, with the reason (naming the whole chain).
    pub errors: BTreeMap<String, String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    Visiting,
    Done,
}

/// Resolves dependencies among `manifests` (the enabled modules).
pub fn resolve<'a>(manifests: impl IntoIterator<Item = &'a Manifest>) -> Resolution {
    let by_name: BTreeMap<&str, &Manifest> = manifests
        .into_iter()
        .map(|m| (m.name.as_str(), m))
        .collect();
    let mut errors: BTreeMap<String, String> = BTreeMap::new();
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();

    // Depth-first: a module is broken if a dependency is missing, of the wrong version, part of a
    // cycle, or itself broken. The first reason found is kept, with the chain that leads to it.
    fn visit<'m>(
        name: &'m str,
        by_name: &BTreeMap<&'m str, &'m Manifest>,
        marks: &mut BTreeMap<&'m str, Mark>,
        stack: &mut Vec<&'m str>,
        errors: &mut BTreeMap<String, String>,
    ) {
        match marks.get(name) {
            Some(Mark::Done) => return,
            Some(Mark::Visiting) => {
                let from = stack.iter().position(|n| *n == name).unwrap_or(0);
                let mut cycle: Vec<&str> = stack[from..].to_vec();
                cycle.push(name);
                let msg = format!("dependency cycle: {}", cycle.join(" → "));
                for n in &stack[from..] {
                    errors.entry((*n).to_owned()).or_insert_with(|| msg.clone());
                }
                return;
            }
            None => {}
        }
        let Some(m) = by_name.get(name) else { return };
        marks.insert(name, Mark::Visiting);
        stack.push(name);
        for dep in &m.dependencies.modules {
            let dn = dep.name.as_str();
            match by_name.get(dn) {
                None => {
                    errors.entry(name.to_owned()).or_insert_with(|| {
                        format!("{name} → {dn}: module `{dn}` is not installed or not enabled")
                    });
                }
                Some(d) => {
                    if let Some(req) = &dep.req
                        && !req.matches(&d.version.0)
                    {
                        errors.entry(name.to_owned()).or_insert_with(|| {
                            format!(
                                "{name} → {dn}: needs `{dn}@{req}` but version {} is installed",
                                d.version
                            )
                        });
                    }
                    visit(dn, by_name, marks, stack, errors);
                    if let Some(why) = errors.get(dn).cloned() {
                        // Each message is a chain that starts at its own module.
                        errors.entry(name.to_owned()).or_insert_with(|| {
                            if why.starts_with(&format!("{dn} →")) {
                                format!("{name} → {why}")
                            } else {
                                format!("{name} → {dn}: {why}")
                            }
                        });
                    }
                }
            }
        }
        stack.pop();
        marks.insert(name, Mark::Done);
    }

    for name in by_name.keys() {
        let mut stack = Vec::new();
        visit(name, &by_name, &mut marks, &mut stack, &mut errors);
    }

    // Kahn's algorithm over the modules that can start; ties broken by priority then name.
    let ok: Vec<&Manifest> = by_name
        .values()
        .filter(|m| !errors.contains_key(m.name.as_str()))
        .copied()
        .collect();
    let mut indegree: BTreeMap<&str, usize> = ok
        .iter()
        .map(|m| (m.name.as_str(), m.dependencies.modules.len()))
        .collect();
    let mut ready: BinaryHeap<Reverse<(Priority, &str)>> = ok
        .iter()
        .filter(|m| m.dependencies.modules.is_empty())
        .map(|m| Reverse((m.priority, m.name.as_str())))
        .collect();
    let mut order = Vec::with_capacity(ok.len());
    while let Some(Reverse((_, name))) = ready.pop() {
        order.push(name.to_owned());
        for m in &ok {
            if m.dependencies
                .modules
                .iter()
                .any(|d| d.name.as_str() == name)
            {
                let n = indegree.entry(m.name.as_str()).or_default();
                *n = n.saturating_sub(
                    m.dependencies
                        .modules
                        .iter()
                        .filter(|d| d.name.as_str() == name)
                        .count(),
                );
                if *n == 0 {
                    ready.push(Reverse((m.priority, m.name.as_str())));
                }
            }
        }
    }
    Resolution { order, errors }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn m(name: &str, version: &str, priority: &str, deps: &[&str]) -> Manifest {
        let deps = deps
            .iter()
            .map(|d| format!("\"{d}\""))
            .collect::<Vec<_>>()
            .join(", ");
        Manifest::parse(
            &format!("name: {name}\nversion: {version}\ntype: core\npriority: {priority}\ndependencies:\n  modules: [{deps}]\n"),
            Path::new("test.yaml"),
        )
        .expect("valid manifest")
    }

    #[test]
    fn order_puts_dependencies_first_then_priority() {
        let ms = [
            m("ui", "1.0.0", "critical", &["memory"]),
            m("memory", "1.0.0", "low", &[]),
            m("echo", "1.0.0", "normal", &[]),
            m("heartbeat", "1.0.0", "high", &[]),
        ];
        let r = resolve(&ms);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.order, ["heartbeat", "echo", "memory", "ui"]);
    }

    #[test]
    fn missing_dependency_names_the_chain() {
        let ms = [
            m("a", "1.0.0", "normal", &["b"]),
            m("b", "1.0.0", "normal", &["c"]),
        ];
        let r = resolve(&ms);
        assert_eq!(
            r.errors["b"],
            "b → c: module `c` is not installed or not enabled"
        );
        assert_eq!(
            r.errors["a"],
            "a → b → c: module `c` is not installed or not enabled"
        );
        assert!(r.order.is_empty());
    }

    #[test]
    fn cycles_name_every_member() {
        let ms = [
            m("a", "1.0.0", "normal", &["b"]),
            m("b", "1.0.0", "normal", &["c"]),
            m("c", "1.0.0", "normal", &["a"]),
            m("d", "1.0.0", "normal", &[]),
        ];
        let r = resolve(&ms);
        assert_eq!(r.errors["a"], "dependency cycle: a → b → c → a");
        assert!(r.errors.contains_key("b") && r.errors.contains_key("c"));
        assert_eq!(r.order, ["d"]);
    }

    #[test]
    fn version_requirements_are_checked() {
        let ms = [
            m("a", "1.0.0", "normal", &["b@^2"]),
            m("b", "1.4.0", "normal", &[]),
        ];
        let r = resolve(&ms);
        assert_eq!(
            r.errors["a"],
            "a → b: needs `b@^2` but version 1.4.0 is installed"
        );
        assert_eq!(r.order, ["b"]);
    }
}
