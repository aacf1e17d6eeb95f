//! One-pass validation: when the structural walk found problems inside some registries or
//! policies, the other items are still deserialized and checked semantically, so a document's
//! every problem — schema and reference alike — comes out in one round.
//!
//! Invariants: an item with a structural problem is left out of the semantic checks, but its
//! name (when it has one) still counts as declared, so no reference to it is reported as unknown;
//! the semantic problems' paths and messages name the items' places in the original document; a
//! structural problem outside the item lists (an unknown top-level field, a list that is not an
//! array, a bare policy) leaves the semantic checks to the next round, as before.
use std::collections::BTreeSet;

use serde_json::Value;

use super::shape::{deserialize, Shape};
use super::Problem;

/// A list of items in the document: where it is and how its items' paths start.
struct ItemList {
    /// The list's key in a config object; `None` for a document that is itself the list.
    key: Option<&'static str>,
    /// Path prefix of its items (`policies` → `policies[3]`; a policy array → `[3]`).
    prefix: &'static str,
}

fn item_lists(shape: Shape) -> &'static [ItemList] {
    match shape {
        Shape::Config => &[
            ItemList {
                key: Some("registries"),
                prefix: "registries",
            },
            ItemList {
                key: Some("policies"),
                prefix: "policies",
            },
        ],
        Shape::Policies => &[ItemList {
            key: None,
            prefix: "",
        }],
        Shape::Policy => &[],
    }
}

/// The semantic problems of the items of `value` that have no `structural` problem, with their
/// original paths; none when a structural problem lies outside the item lists.
pub(super) fn semantic_problems_of_sound_items(
    value: &Value,
    shape: Shape,
    structural: &[Problem],
) -> Vec<Problem> {
    let lists = item_lists(shape);
    let mut broken: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); lists.len()];
    for problem in structural {
        let Some((list, index)) = lists
            .iter()
            .enumerate()
            .find_map(|(l, list)| item_index(&problem.path, list.prefix).map(|i| (l, i)))
        else {
            return Vec::new();
        };
        broken[list].insert(index);
    }
    let mut sound = value.clone();
    let mut original: Vec<Vec<usize>> = Vec::new();
    let mut declared_elsewhere = Vec::new();
    for (list, broken) in lists.iter().zip(&broken) {
        let items = match list.key {
            Some(key) => sound.get_mut(key),
            None => Some(&mut sound),
        };
        let Some(Value::Array(items)) = items else {
            original.push(Vec::new());
            continue;
        };
        let mut kept = Vec::new();
        let mut place = Vec::new();
        for (i, item) in std::mem::take(items).into_iter().enumerate() {
            if !broken.contains(&i) {
                kept.push(item);
                place.push(i);
            } else if list.key == Some("registries") {
                if let Some(name) = item.get("name").and_then(Value::as_str) {
                    declared_elsewhere.push(name.to_string());
                }
            }
        }
        *items = kept;
        original.push(place);
    }
    let Ok(config) = deserialize(sound, shape) else {
        return Vec::new();
    };
    let declared = (shape == Shape::Config).then(|| {
        let mut names: Vec<String> = config.registries.iter().map(|r| r.name.clone()).collect();
        names.extend(declared_elsewhere);
        names
    });
    config
        .check_against(shape, declared)
        .1
        .into_iter()
        .map(|mut p| {
            for (list, place) in lists.iter().zip(&original) {
                p.path = renumber(&p.path, list.prefix, place);
                p.message = renumber(&p.message, list.prefix, place);
                p.hint = p.hint.map(|h| renumber(&h, list.prefix, place));
            }
            p
        })
        .collect()
}

/// The index of the item of the list at `prefix` that `path` lies in.
fn item_index(path: &str, prefix: &str) -> Option<usize> {
    let rest = path.strip_prefix(prefix)?.strip_prefix('[')?;
    let end = rest.find(']')?;
    rest[..end].parse().ok()
}

/// `text` with every `<prefix>[n]` (an item of the thinned list) written as `<prefix>[place[n]]`
/// (its place in the document). An empty prefix matches `[n]` only where no name precedes it.
fn renumber(text: &str, prefix: &str, place: &[usize]) -> String {
    let pattern = format!("{prefix}[");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(&pattern) {
        let (before, after) = rest.split_at(at);
        out.push_str(before);
        let preceded = out
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ']' || c == '.');
        let digits = &after[pattern.len()..];
        let end = digits.find(']').unwrap_or(0);
        match digits[..end].parse::<usize>().ok().filter(|_| !preceded) {
            Some(n) => {
                let n = place.get(n).copied().unwrap_or(n);
                out.push_str(&format!("{prefix}[{n}]"));
                rest = &digits[end + 1..];
            }
            None => {
                out.push_str(&pattern);
                rest = digits;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renumbering_maps_thinned_indices_back_to_the_document() {
        let place = [0, 2, 5];
        assert_eq!(
            renumber(
                "policies[1].name: already used by policies[0]",
                "policies",
                &place
            ),
            "policies[2].name: already used by policies[0]"
        );
        assert_eq!(renumber("[2].trigger", "", &place), "[5].trigger");
        assert_eq!(
            renumber("registries[2].url", "policies", &place),
            "registries[2].url"
        );
        assert_eq!(renumber("filters[1].value", "", &place), "filters[1].value");
    }

    #[test]
    fn item_paths_name_their_list_and_index() {
        assert_eq!(item_index("policies[12].filters[0]", "policies"), Some(12));
        assert_eq!(item_index("[3].name", ""), Some(3));
        assert_eq!(item_index("regions[0]", "policies"), None);
        assert_eq!(item_index("", ""), None);
    }
}
