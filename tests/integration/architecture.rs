//! The architecture of docs/architecture.md, checked by reading the sources: the engine crate
//! depends on no operator or CLI crate, and no module imports a module that imports it back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_engine_depends_on_no_operator_or_cli_crate() {
    let manifest = std::fs::read_to_string(root().join("crates/engine/Cargo.toml"))
        .expect("read crates/engine/Cargo.toml");
    let mut section = String::new();
    let mut dependencies = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
        } else if section == "[dependencies]"
            && let Some((name, _)) = line.split_once(['=', '.'])
        {
            dependencies.push(name.trim().to_string());
        }
    }
    assert!(
        dependencies.contains(&"reqwest".to_string()),
        "{dependencies:?}"
    );
    for forbidden in ["kube", "k8s-openapi", "clap", "axum", "prometheus-client"] {
        assert!(
            !dependencies.iter().any(|d| d == forbidden),
            "the engine must not depend on {forbidden}"
        );
    }
}

/// Module path (`["registry", "auth"]`) → source file, for one crate's `src`.
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    fn visit(dir: &Path, src: &Path, found: &mut BTreeMap<Vec<String>, PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read a source directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                visit(&path, src, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path
                    .strip_prefix(src)
                    .expect("under src")
                    .with_extension("");
                let mut segments: Vec<String> = relative
                    .iter()
                    .map(|s| s.to_string_lossy().into_owned())
                    .collect();
                if matches!(
                    segments.last().map(String::as_str),
                    Some("mod" | "lib" | "main")
                ) {
                    segments.pop();
                }
                found.insert(segments, path);
            }
        }
    }
    let mut found = BTreeMap::new();
    visit(src, src, &mut found);
    found
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The code of a file without its unit tests and comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read a source file");
    let tests = [
        "#[cfg(test)]\nmod tests",
        "#[cfg(test)]\npub(crate) mod tests",
    ]
    .iter()
    .filter_map(|start| text.find(start))
    .min();
    let text = match tests {
        Some(at) => &text[..at],
        None => &text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module a path written in `from` names: `crate::a::b::Item` → `["a", "b"]`.
fn resolve(
    from: &[String],
    path: &[&str],
    modules: &BTreeMap<Vec<String>, PathBuf>,
) -> Vec<String> {
    let mut current: Vec<String> = match path.first() {
        Some(&"crate") => Vec::new(),
        _ => from.to_vec(),
    };
    let mut rest = &path[1..];
    if path.first() == Some(&"super") {
        current.pop();
    }
    while rest.first() == Some(&"super") {
        current.pop();
        rest = &rest[1..];
    }
    for segment in rest {
        let mut next = current.clone();
        next.push((*segment).to_string());
        if !modules.contains_key(&next) {
            break;
        }
        current = next;
    }
    current
}

/// Which modules each module uses: `crate::`, `super::` and `self::` paths (with `{…}` groups of
/// `use`), and `child::` paths of its own child modules.
fn imports(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules = modules(src);
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, file) in &modules {
        let code = code(file);
        let chars: Vec<char> = code.chars().collect();
        let mut targets = BTreeSet::new();
        let mut at = 0;
        while at < chars.len() {
            let boundary = at == 0 || !(is_ident(chars[at - 1]) || chars[at - 1] == ':');
            if !boundary || !is_ident(chars[at]) {
                at += 1;
                continue;
            }
            let start = at;
            while at < chars.len() && (is_ident(chars[at]) || chars[at] == ':') {
                at += 1;
            }
            let path: String = chars[start..at].iter().collect();
            let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            let first = segments.first().copied().unwrap_or_default();
            let is_child = {
                let mut child = module.clone();
                child.push(first.to_string());
                path.contains("::") && modules.contains_key(&child)
            };
            if !(matches!(first, "crate" | "super" | "self") || is_child) || !path.contains("::") {
                continue;
            }
            let mut full: Vec<&str> = if is_child {
                std::iter::once("self").chain(segments).collect()
            } else {
                segments
            };
            let base = resolve(module, &full, &modules);
            if path.ends_with("::") && chars.get(at) == Some(&'{') {
                // `use a::{b, c::d}`: each member may be a module of its own.
                let close = chars[at..]
                    .iter()
                    .position(|c| *c == '}')
                    .map_or(chars.len(), |p| at + p);
                let group: String = chars[at + 1..close].iter().collect();
                for member in group.split(',') {
                    let name = member.trim().split("::").next().unwrap_or_default();
                    full.push(name);
                    targets.insert(resolve(module, &full, &modules));
                    full.pop();
                }
                at = close;
            } else {
                targets.insert(base);
            }
        }
        targets.remove(module);
        edges.insert(module.clone(), targets);
    }
    edges
}

/// The first cycle found among the modules, as module paths.
fn cycle(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    fn visit<'a>(
        node: &'a Vec<String>,
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        stack: &mut Vec<&'a Vec<String>>,
        done: &mut BTreeSet<&'a Vec<String>>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| *n == node) {
            return Some(
                stack[at..]
                    .iter()
                    .map(|n| format!("::{}", n.join("::")))
                    .collect(),
            );
        }
        if !done.insert(node) {
            return None;
        }
        stack.push(node);
        for next in edges.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, edges, stack, done) {
                return Some(found);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    for src in ["crates/engine/src", "src"] {
        let edges = imports(&root().join(src));
        assert!(edges.len() > 10, "{src}: {} modules read", edges.len());
        assert_eq!(cycle(&edges), None, "an import cycle in {src}");
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let module = |path: &str| -> Vec<String> {
        path.split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut edges = BTreeMap::new();
    edges.insert(module("copy"), BTreeSet::from([module("registry")]));
    edges.insert(module("registry"), BTreeSet::from([module("settings")]));
    edges.insert(module("settings"), BTreeSet::new());
    assert_eq!(cycle(&edges), None);
    edges.insert(module("registry"), BTreeSet::from([module("copy")]));
    assert!(cycle(&edges).is_some());
}
