//! Selection rules: the `include` and `exclude` lists of the config file.
//!
//! A rule is a group of conditions that must all hold (AND); a condition
//! that lists several values holds if any of them does (OR). Process
//! conditions: `ports` (listening on), `executables` (globs), `pids`. Pod
//! conditions: `namespaces`, `pod_labels` and `pod_annotations` (Kubernetes
//! label selectors), `owners` (kind and optional name, matched against
//! every controller of the pod, so a Deployment's pods match both
//! `{kind: Deployment, name: web}` and their ReplicaSet), `containers`
//! (container names). A rule with pod conditions never matches a process
//! outside a known pod.

use std::{collections::HashSet, path::Path};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use super::{
    SelectorError,
    k8s::{PodMatch, labels::LabelSelectorConfig},
};

/// One include or exclude rule as written in the config file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Pod namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Label selector on the pod's labels.
    #[serde(default)]
    pub pod_labels: Option<LabelSelectorConfig>,
    /// Label selector on the pod's annotations.
    #[serde(default)]
    pub pod_annotations: Option<LabelSelectorConfig>,
    /// Controllers of the pod.
    #[serde(default)]
    pub owners: Vec<OwnerSelector>,
    /// Container names.
    #[serde(default)]
    pub containers: Vec<String>,
    /// Listening TCP ports.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Executable globs (on the full path if the glob has a `/`).
    #[serde(default)]
    pub executables: Vec<String>,
    /// Process ids.
    #[serde(default)]
    pub pids: Vec<u32>,
}

impl RuleConfig {
    /// True if the rule has pod conditions (it needs `kubernetes.enabled`).
    pub fn uses_pods(&self) -> bool {
        !self.namespaces.is_empty()
            || self.pod_labels.is_some()
            || self.pod_annotations.is_some()
            || !self.owners.is_empty()
            || !self.containers.is_empty()
    }

    /// True if the rule has no condition at all (it would match everything).
    pub fn is_empty(&self) -> bool {
        !self.uses_pods()
            && self.ports.is_empty()
            && self.executables.is_empty()
            && self.pids.is_empty()
    }
}

/// `{kind: Deployment, name: web}`; without a name, any owner of that kind.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OwnerSelector {
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `ReplicaSet`, `Job`,
    /// `CronJob`, ...
    pub kind: String,
    /// Object name.
    #[serde(default)]
    pub name: Option<String>,
}

/// What is known of a process when rules are evaluated.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// Process id.
    pub pid: u32,
    /// Executable path.
    pub exe: Option<&'a Path>,
    /// Selector ports it was seen listening on.
    pub ports: Option<&'a HashSet<u16>>,
    /// Its pod, if it runs in one the store knows.
    pub pod: Option<&'a PodMatch>,
}

/// Executable globs: on the file name, or on the full path when the
/// pattern contains `/`.
#[derive(Clone, Debug)]
pub struct ExeGlobs {
    paths: GlobSet,
    names: GlobSet,
}

impl ExeGlobs {
    /// Compiles the patterns.
    pub fn new(patterns: &[String]) -> Result<Self, SelectorError> {
        let mut paths = GlobSetBuilder::new();
        let mut names = GlobSetBuilder::new();
        for pattern in patterns {
            let glob = Glob::new(pattern).map_err(|source| SelectorError {
                pattern: pattern.clone(),
                source,
            })?;
            if pattern.contains('/') {
                paths.add(glob)
            } else {
                names.add(glob)
            };
        }
        let build = |builder: GlobSetBuilder| {
            builder.build().map_err(|source| SelectorError {
                pattern: patterns.join(","),
                source,
            })
        };
        Ok(Self {
            paths: build(paths)?,
            names: build(names)?,
        })
    }

    /// True if there is no pattern.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.names.is_empty()
    }

    /// True if a pattern matches `exe`.
    pub fn matches(&self, exe: &Path) -> bool {
        self.paths.is_match(exe)
            || exe
                .file_name()
                .is_some_and(|name| self.names.is_match(name))
    }
}

/// A compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    config: RuleConfig,
    executables: ExeGlobs,
}

impl Rule {
    /// Compiles a rule.
    pub fn new(config: &RuleConfig) -> Result<Self, SelectorError> {
        Ok(Self {
            executables: ExeGlobs::new(&config.executables)?,
            config: config.clone(),
        })
    }

    /// The rule that keeps `kube-system` out by default.
    pub fn namespace(namespace: &str) -> Self {
        Self {
            config: RuleConfig {
                namespaces: vec![namespace.to_owned()],
                ..RuleConfig::default()
            },
            executables: ExeGlobs {
                paths: GlobSet::empty(),
                names: GlobSet::empty(),
            },
        }
    }

    /// The rule's configuration.
    pub fn config(&self) -> &RuleConfig {
        &self.config
    }

    /// True if every condition of the rule holds for `candidate`.
    pub fn matches(&self, candidate: &Candidate<'_>) -> bool {
        self.process_matches(candidate) && self.pod_matches(candidate)
    }

    fn process_matches(&self, candidate: &Candidate<'_>) -> bool {
        let config = &self.config;
        (config.pids.is_empty() || config.pids.contains(&candidate.pid))
            && (config.ports.is_empty()
                || candidate
                    .ports
                    .is_some_and(|ports| config.ports.iter().any(|p| ports.contains(p))))
            && (self.executables.is_empty()
                || candidate
                    .exe
                    .is_some_and(|exe| self.executables.matches(exe)))
    }

    fn pod_matches(&self, candidate: &Candidate<'_>) -> bool {
        let config = &self.config;
        if !config.uses_pods() {
            return true;
        }
        let Some(found) = candidate.pod else {
            return false;
        };
        let pod = &found.pod;
        (config.namespaces.is_empty() || config.namespaces.contains(&pod.namespace))
            && config
                .pod_labels
                .as_ref()
                .is_none_or(|selector| selector.matches(&pod.labels))
            && config
                .pod_annotations
                .as_ref()
                .is_none_or(|selector| selector.matches(&pod.annotations))
            && (config.owners.is_empty()
                || config.owners.iter().any(|wanted| {
                    pod.owners.iter().any(|owner| {
                        owner.kind == wanted.kind
                            && wanted.name.as_ref().is_none_or(|name| *name == owner.name)
                    })
                }))
            && (config.containers.is_empty()
                || found
                    .container
                    .as_ref()
                    .is_some_and(|name| config.containers.contains(name)))
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

    use super::*;
    use crate::discovery::k8s::{Owner, PodMeta};

    fn rule(yaml: &str) -> Rule {
        let config: RuleConfig =
            serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
        Rule::new(&config).expect("valid rule")
    }

    fn pod(namespace: &str, labels: &[(&str, &str)], container: Option<&str>) -> PodMatch {
        PodMatch {
            pod: Arc::new(PodMeta {
                uid: "u".into(),
                namespace: namespace.into(),
                name: "web-7d4b9c8f5-x2x9z".into(),
                resource_version: "1".into(),
                node_name: "n".into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                annotations: BTreeMap::from([("sonde.dev/trace".into(), "on".into())]),
                owners: vec![
                    Owner::new("ReplicaSet", "web-7d4b9c8f5"),
                    Owner::new("Deployment", "web"),
                ],
                containers: vec![],
            }),
            container: container.map(str::to_owned),
        }
    }

    fn candidate<'a>(pod: Option<&'a PodMatch>, exe: Option<&'a Path>) -> Candidate<'a> {
        Candidate {
            pid: 1,
            exe,
            ports: None,
            pod,
        }
    }

    #[test]
    fn all_conditions_of_a_rule_must_hold() {
        let r = rule(
            "namespaces: [shop, pay]\n\
             pod_labels: {matchLabels: {app: web}}\n\
             pod_annotations: {matchExpressions: [{key: sonde.dev/trace, operator: In, values: [on]}]}\n\
             owners: [{kind: Deployment, name: web}]\n\
             containers: [app]\n\
             executables: ['python3*']\n",
        );
        let exe = PathBuf::from("/usr/bin/python3.11");
        let web = pod("shop", &[("app", "web")], Some("app"));
        assert!(r.matches(&candidate(Some(&web), Some(&exe))));
        assert!(!r.matches(&candidate(Some(&web), Some(Path::new("/usr/bin/node")))));
        assert!(!r.matches(&candidate(None, Some(&exe))), "no pod");
        let other_ns = pod("dev", &[("app", "web")], Some("app"));
        assert!(!r.matches(&candidate(Some(&other_ns), Some(&exe))));
        let other_label = pod("pay", &[("app", "db")], Some("app"));
        assert!(!r.matches(&candidate(Some(&other_label), Some(&exe))));
        let sidecar = pod("shop", &[("app", "web")], Some("envoy"));
        assert!(!r.matches(&candidate(Some(&sidecar), Some(&exe))));
        // Container not reported yet: a container condition cannot hold.
        let unknown = pod("shop", &[("app", "web")], None);
        assert!(!r.matches(&candidate(Some(&unknown), Some(&exe))));
    }

    #[test]
    fn owners_match_any_controller_in_the_chain() {
        let web = pod("shop", &[], None);
        let candidate = Candidate {
            pid: 1,
            exe: None,
            ports: None,
            pod: Some(&web),
        };
        assert!(rule("owners: [{kind: Deployment}]").matches(&candidate));
        assert!(rule("owners: [{kind: ReplicaSet, name: web-7d4b9c8f5}]").matches(&candidate));
        assert!(
            rule("owners: [{kind: StatefulSet}, {kind: Deployment, name: web}]")
                .matches(&candidate)
        );
        assert!(!rule("owners: [{kind: Deployment, name: api}]").matches(&candidate));
        assert!(!rule("owners: [{kind: DaemonSet}]").matches(&candidate));
    }

    #[test]
    fn process_conditions_and_emptiness() {
        let ports = HashSet::from([8080]);
        let candidate = Candidate {
            pid: 42,
            exe: None,
            ports: Some(&ports),
            pod: None,
        };
        assert!(rule("ports: [80, 8080]").matches(&candidate));
        assert!(!rule("ports: [80]").matches(&candidate));
        assert!(rule("pids: [42]\nports: [8080]").matches(&candidate));
        assert!(!rule("pids: [42]\nexecutables: [nginx]").matches(&candidate));
        assert!(Rule::namespace("kube-system").config().uses_pods());
        assert!(RuleConfig::default().is_empty());
        assert!(!rule("pids: [1]").config().is_empty());
        assert!(serde_yaml_ng::from_str::<RuleConfig>("namespace: [a]").is_err());
    }
}
