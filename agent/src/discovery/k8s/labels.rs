//! Kubernetes label selectors, written in the config file exactly as in a
//! manifest (`matchLabels` for equality, `matchExpressions` with `In`,
//! `NotIn`, `Exists`, `DoesNotExist` for set expressions) and matched against
//! a pod's labels or annotations with the API server's semantics: every
//! requirement must hold, and `NotIn`/`DoesNotExist` hold when the key is
//! absent.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

/// A label selector as written in the config file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelectorConfig {
    /// `key: value` pairs that must all be present.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    #[serde(default)]
    pub match_expressions: Vec<LabelRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "RawRequirement")]
pub struct LabelRequirement {
    key: String,
    operator: Operator,
    values: HashSet<String>,
}

/// Set-expression operators.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum Operator {
    /// The key is present with one of the values.
    In,
    /// The key is absent, or present with none of the values.
    NotIn,
    /// The key is present.
    Exists,
    /// The key is absent.
    DoesNotExist,
}

/// A requirement whose values do not fit its operator, as the API server
/// would reject it.
#[derive(Debug, thiserror::Error)]
#[error("label selector requirement on {key:?}: {operator:?} {reason}")]
pub struct RequirementError {
    key: String,
    operator: Operator,
    reason: &'static str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequirement {
    key: String,
    operator: Operator,
    #[serde(default)]
    values: Vec<String>,
}

impl TryFrom<RawRequirement> for LabelRequirement {
    type Error = RequirementError;

    fn try_from(raw: RawRequirement) -> Result<Self, Self::Error> {
        let needs_values = matches!(raw.operator, Operator::In | Operator::NotIn);
        let reason = match (needs_values, raw.values.is_empty()) {
            (true, true) => Some("needs at least one value"),
            (false, false) => Some("takes no values"),
            _ => None,
        };
        if let Some(reason) = reason {
            return Err(RequirementError {
                key: raw.key,
                operator: raw.operator,
                reason,
            });
        }
        Ok(Self {
            key: raw.key,
            operator: raw.operator,
            values: raw.values.into_iter().collect(),
        })
    }
}

impl LabelRequirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl LabelSelectorConfig {
    /// True if every requirement holds for `labels`. An empty selector
    /// matches everything, as in Kubernetes.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Every key the selector looks at.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.match_labels
            .keys()
            .map(String::as_str)
            .chain(self.match_expressions.iter().map(|r| r.key.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(yaml: &str) -> LabelSelectorConfig {
        serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn equality_and_set_expressions() {
        let s = selector(
            "matchLabels: {app: shop}\n\
             matchExpressions:\n\
             - {key: tier, operator: In, values: [web, api]}\n\
             - {key: track, operator: NotIn, values: [canary]}\n\
             - {key: team, operator: Exists}\n\
             - {key: legacy, operator: DoesNotExist}\n",
        );
        let base = [("app", "shop"), ("tier", "web"), ("team", "a")];
        assert!(s.matches(&labels(&base)));
        // NotIn holds when the key is absent, fails on a listed value.
        assert!(s.matches(&labels(&[("track", "stable"), base[0], base[1], base[2]])));
        assert!(!s.matches(&labels(&[("track", "canary"), base[0], base[1], base[2]])));
        assert!(!s.matches(&labels(&[("app", "other"), base[1], base[2]])));
        assert!(!s.matches(&labels(&[("tier", "db"), base[0], base[2]])));
        assert!(!s.matches(&labels(&[base[0], base[1]])), "team must exist");
        assert!(!s.matches(&labels(&[("legacy", ""), base[0], base[1], base[2]])));
        assert!(selector("{}").matches(&labels(&[])));
        let mut keys: Vec<&str> = s.keys().collect();
        keys.sort_unstable();
        assert_eq!(keys, ["app", "legacy", "team", "tier", "track"]);
    }

    #[test]
    fn rejects_what_the_api_server_rejects() {
        for yaml in [
            "matchExpressions: [{key: a, operator: In}]",
            "matchExpressions: [{key: a, operator: NotIn, values: []}]",
            "matchExpressions: [{key: a, operator: Exists, values: [x]}]",
            "matchExpressions: [{key: a, operator: Equals, values: [x]}]",
            "matchLabel: {a: b}",
        ] {
            assert!(
                serde_yaml_ng::from_str::<LabelSelectorConfig>(yaml).is_err(),
                "{yaml}"
            );
        }
    }
}
