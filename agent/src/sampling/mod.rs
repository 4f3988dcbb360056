//! Head sampling: which traces get spans. The OpenTelemetry SDK samplers
//! (`OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, or `sampling:` in the
//! config file, which wins), per-service ratios, and a per-service span rate
//! cap ([`rate`]).
//!
//! The kernel decides for the traces it makes ids for (HTTP/1, plaintext
//! and TLS): its sampled flag goes into the `traceparent` it injects, so the
//! decision must be taken there, before the request is parsed. The agent
//! hands it the sampler ([`HeadSampler::kernel_settings`]) and per-process
//! thresholds for services with a rule ([`HeadSampler::service_threshold`]),
//! and repeats the same decision ([`HeadSampler::trace_flags`], the shared
//! `agent_common::sampling`) for spans whose ids it makes itself.
//!
//! Rules match services only: a route is known after parsing, too late for
//! the flag the kernel already injected downstream, so a route rule would
//! drop spans whose children other services export (or the reverse).

pub mod rate;

use agent_common::sampling::{self, PARENT_BASED, SERVICE_RULES, THRESHOLD_NEVER};
use globset::{Glob, GlobMatcher};
use serde::Deserialize;

/// The standard sampler names (`OTEL_TRACES_SAMPLER` values).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SamplerName {
    /// Every trace.
    AlwaysOn,
    /// No trace.
    AlwaysOff,
    /// A share of traces, chosen by trace id, whatever the parent says.
    #[serde(rename = "traceidratio")]
    TraceIdRatio,
    /// The parent's decision; every new trace.
    #[default]
    #[serde(rename = "parentbased_always_on")]
    ParentBasedAlwaysOn,
    /// The parent's decision; no new trace.
    #[serde(rename = "parentbased_always_off")]
    ParentBasedAlwaysOff,
    /// The parent's decision; a share of new traces, chosen by trace id.
    #[serde(rename = "parentbased_traceidratio")]
    ParentBasedTraceIdRatio,
}

impl SamplerName {
    const ALL: [(&'static str, Self); 6] = [
        ("always_on", Self::AlwaysOn),
        ("always_off", Self::AlwaysOff),
        ("traceidratio", Self::TraceIdRatio),
        ("parentbased_always_on", Self::ParentBasedAlwaysOn),
        ("parentbased_always_off", Self::ParentBasedAlwaysOff),
        ("parentbased_traceidratio", Self::ParentBasedTraceIdRatio),
    ];

    /// The sampler an `OTEL_TRACES_SAMPLER` value names (case-insensitive,
    /// as the SDK specification asks of enum values).
    pub fn from_env_value(value: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(value.trim()))
            .map(|(_, sampler)| *sampler)
    }

    fn parent_based(self) -> bool {
        matches!(
            self,
            Self::ParentBasedAlwaysOn | Self::ParentBasedAlwaysOff | Self::ParentBasedTraceIdRatio
        )
    }

    /// The ratio of new traces sampled: `ratio` for the ratio samplers.
    fn root_ratio(self, ratio: f64) -> f64 {
        match self {
            Self::AlwaysOn | Self::ParentBasedAlwaysOn => 1.0,
            Self::AlwaysOff | Self::ParentBasedAlwaysOff => 0.0,
            Self::TraceIdRatio | Self::ParentBasedTraceIdRatio => ratio,
        }
    }
}

/// The `sampling:` section of the config file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Sampler; unset: `OTEL_TRACES_SAMPLER`, else `parentbased_always_on`.
    pub sampler: Option<SamplerName>,
    /// Ratio of the `*traceidratio` samplers, 0..=1; unset:
    /// `OTEL_TRACES_SAMPLER_ARG`, else 1.
    pub ratio: Option<f64>,
    /// Ratios of new traces per service (`service.name` glob), first match
    /// wins; unmatched services use `ratio`. Parents still decide under a
    /// parent-based sampler.
    pub rules: Vec<SamplingRule>,
    /// Spans per second each service may export at most; past it spans are
    /// dropped and counted. Unset: no cap.
    pub max_spans_per_second: Option<u32>,
}

/// One per-service ratio.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingRule {
    /// Glob on `service.name`.
    pub service: String,
    /// Ratio of this service's new traces, 0..=1.
    pub ratio: f64,
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplingError {
    /// A ratio outside 0..=1.
    #[error("{field}: ratio {ratio} is not in 0..=1")]
    Ratio {
        /// Where it was set.
        field: String,
        /// The value.
        ratio: f64,
    },
    /// A rule's service pattern is not a glob.
    #[error("sampling.rules[{index}].service: {reason}")]
    Glob {
        /// Rule index.
        index: usize,
        /// Why.
        reason: String,
    },
    /// A cap of zero spans per second.
    #[error("sampling.max_spans_per_second: must be > 0 (leave it unset for no cap)")]
    ZeroCap,
}

/// The resolved sampler.
#[derive(Clone, Debug)]
pub struct HeadSampler {
    parent_based: bool,
    /// Share of new traces sampled (services without a rule).
    root_ratio: f64,
    /// Rejection threshold for new traces of services without a rule.
    threshold: u64,
    rules: Vec<(GlobMatcher, u64)>,
}

impl HeadSampler {
    /// Resolves the config file's settings over the environment's (`env`
    /// looks a variable up). A sampler or argument the environment gets
    /// wrong is ignored with a warning, as the SDKs do; the file's are errors.
    pub fn new(
        config: &SamplingConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Self, Vec<String>), SamplingError> {
        let mut warnings = Vec::new();
        let name = config.sampler.unwrap_or_else(|| {
            let value = env("OTEL_TRACES_SAMPLER").filter(|v| !v.trim().is_empty());
            value.map_or_else(SamplerName::default, |value| {
                SamplerName::from_env_value(&value).unwrap_or_else(|| {
                    warnings.push(format!(
                        "OTEL_TRACES_SAMPLER={value} is not supported; using parentbased_always_on"
                    ));
                    SamplerName::default()
                })
            })
        });
        let ratio = match config.ratio {
            Some(ratio) => check_ratio("sampling.ratio", ratio)?,
            None => env_ratio(name, &env, &mut warnings),
        };
        let rules = config
            .rules
            .iter()
            .enumerate()
            .map(|(index, rule)| {
                let glob = Glob::new(&rule.service).map_err(|error| SamplingError::Glob {
                    index,
                    reason: error.to_string(),
                })?;
                let ratio = check_ratio(&format!("sampling.rules[{index}].ratio"), rule.ratio)?;
                Ok((glob.compile_matcher(), ratio_threshold(ratio)))
            })
            .collect::<Result<_, _>>()?;
        if config.max_spans_per_second == Some(0) {
            return Err(SamplingError::ZeroCap);
        }
        let root_ratio = name.root_ratio(ratio);
        let sampler = Self {
            parent_based: name.parent_based(),
            root_ratio,
            threshold: ratio_threshold(root_ratio),
            rules,
        };
        Ok((sampler, warnings))
    }

    /// `(sampler bits, threshold)` for the kernel's `KernelConfig`.
    pub fn kernel_settings(&self) -> (u32, u64) {
        let parent_based = if self.parent_based { PARENT_BASED } else { 0 };
        let service_rules = if self.rules.is_empty() {
            0
        } else {
            SERVICE_RULES
        };
        (parent_based | service_rules, self.threshold)
    }

    /// The threshold of the first rule matching `service`, if any.
    pub fn service_threshold(&self, service: &str) -> Option<u64> {
        self.rules
            .iter()
            .find(|(glob, _)| glob.is_match(service))
            .map(|(_, threshold)| *threshold)
    }

    /// Trace flags of a span of `service` the agent makes ids for: the
    /// kernel's decision, taken the same way.
    pub fn trace_flags(&self, service: &str, trace_id: &[u8; 16], parent_flags: Option<u8>) -> u8 {
        let (bits, default) = self.kernel_settings();
        let threshold = self.service_threshold(service).unwrap_or(default);
        sampling::trace_flags(bits, threshold, trace_id, parent_flags.map(u32::from)) as u8
    }

    /// A one-line description for the log (`ParentBased{root=...}`).
    pub fn describe(&self) -> String {
        let root = match self.root_ratio {
            1.0 => "AlwaysOnSampler".to_owned(),
            0.0 => "AlwaysOffSampler".to_owned(),
            ratio => format!("TraceIdRatioBased{{{ratio:.6}}}"),
        };
        let described = if self.parent_based {
            format!("ParentBased{{root={root}}}")
        } else {
            root
        };
        match self.rules.len() {
            0 => described,
            rules => format!("{described}, {rules} service rule(s)"),
        }
    }
}

/// `OTEL_TRACES_SAMPLER_ARG` for the ratio samplers: 1 when unset, and
/// (with a warning) when it is not a number in 0..=1.
fn env_ratio(
    name: SamplerName,
    env: &impl Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> f64 {
    let Some(value) = env("OTEL_TRACES_SAMPLER_ARG").filter(|v| !v.trim().is_empty()) else {
        return 1.0;
    };
    match value.trim().parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => ratio,
        _ => {
            if name.root_ratio(0.5) == 0.5 {
                warnings.push(format!(
                    "OTEL_TRACES_SAMPLER_ARG={value} is not a ratio in 0..=1; using 1"
                ));
            }
            1.0
        }
    }
}

fn check_ratio(field: &str, ratio: f64) -> Result<f64, SamplingError> {
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(SamplingError::Ratio {
            field: field.to_owned(),
            ratio,
        })
    }
}

/// The rejection threshold of a sampling ratio: `(1 - ratio) * 2^56`,
/// rounded to the nearest integer (ratios below `2^-57` sample nothing).
pub fn ratio_threshold(ratio: f64) -> u64 {
    let kept = (ratio.clamp(0.0, 1.0) * THRESHOLD_NEVER as f64).round() as u64;
    THRESHOLD_NEVER - kept.min(THRESHOLD_NEVER)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |key| {
            vars.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn sampler(config: &SamplingConfig, vars: &[(&str, &str)]) -> HeadSampler {
        HeadSampler::new(config, env(vars)).unwrap().0
    }

    fn sampled(sampler: &HeadSampler, service: &str, id: &[u8; 16], parent: Option<u8>) -> bool {
        sampler.trace_flags(service, id, parent) & 1 == 1
    }

    /// A trace id whose randomness value is `share` of the way to 2^56.
    fn trace_at(share: f64) -> [u8; 16] {
        let r = (share * THRESHOLD_NEVER as f64) as u64;
        let mut id = [0x55; 16];
        id[9..].copy_from_slice(&r.to_be_bytes()[1..]);
        id
    }

    #[test]
    fn thresholds_follow_the_specification() {
        assert_eq!(ratio_threshold(1.0), 0);
        assert_eq!(ratio_threshold(0.0), THRESHOLD_NEVER);
        // The spec's table: 0.5 -> 8, 0.25 -> c, 0.125 -> e (first hex digits of T).
        assert_eq!(ratio_threshold(0.5), 0x0080_0000_0000_0000);
        assert_eq!(ratio_threshold(0.25), 0x00c0_0000_0000_0000);
        assert_eq!(ratio_threshold(0.125), 0x00e0_0000_0000_0000);
        assert_eq!(ratio_threshold(0.1) >> 40, 0xe666);
    }

    #[test]
    fn default_is_parent_based_always_on() {
        let s = sampler(&SamplingConfig::default(), &[]);
        assert_eq!(s.kernel_settings(), (PARENT_BASED, 0));
        assert!(sampled(&s, "svc", &trace_at(0.0), None));
        assert!(!sampled(&s, "svc", &trace_at(0.9), Some(0)));
        assert_eq!(s.describe(), "ParentBased{root=AlwaysOnSampler}");
    }

    #[test]
    fn reads_the_sdk_variables() {
        let cases = [
            ("always_on", (0, 0)),
            ("ALWAYS_OFF", (0, THRESHOLD_NEVER)),
            ("traceidratio", (0, ratio_threshold(0.25))),
            ("parentbased_always_off", (PARENT_BASED, THRESHOLD_NEVER)),
            (
                "parentbased_traceidratio",
                (PARENT_BASED, ratio_threshold(0.25)),
            ),
        ];
        for (name, settings) in cases {
            let vars = [
                ("OTEL_TRACES_SAMPLER", name),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ];
            assert_eq!(
                sampler(&SamplingConfig::default(), &vars).kernel_settings(),
                settings,
                "{name}"
            );
        }
    }

    #[test]
    fn bad_environment_values_fall_back_with_a_warning() {
        let vars = [("OTEL_TRACES_SAMPLER", "jaeger_remote")];
        let (s, warnings) = HeadSampler::new(&SamplingConfig::default(), env(&vars)).unwrap();
        assert_eq!(s.kernel_settings(), (PARENT_BASED, 0));
        assert_eq!(warnings.len(), 1);
        let vars = [
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ];
        let (s, warnings) = HeadSampler::new(&SamplingConfig::default(), env(&vars)).unwrap();
        assert_eq!(s.kernel_settings(), (0, 0));
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn the_file_wins_over_the_environment_and_is_checked() {
        let config = SamplingConfig {
            sampler: Some(SamplerName::TraceIdRatio),
            ratio: Some(0.5),
            ..SamplingConfig::default()
        };
        let vars = [
            ("OTEL_TRACES_SAMPLER", "always_off"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
        ];
        assert_eq!(
            sampler(&config, &vars).kernel_settings(),
            (0, ratio_threshold(0.5))
        );
        let bad = SamplingConfig {
            ratio: Some(-0.1),
            ..SamplingConfig::default()
        };
        assert!(HeadSampler::new(&bad, env(&[])).is_err());
        let zero_cap = SamplingConfig {
            max_spans_per_second: Some(0),
            ..SamplingConfig::default()
        };
        assert_eq!(
            HeadSampler::new(&zero_cap, env(&[])).unwrap_err(),
            SamplingError::ZeroCap
        );
    }

    #[test]
    fn ratio_decisions_are_by_trace_id_and_nested() {
        let vars = [
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ];
        let s = sampler(&SamplingConfig::default(), &vars);
        // Sampled iff the randomness is in the top quarter, parent or not.
        assert!(sampled(&s, "svc", &trace_at(0.80), None));
        assert!(!sampled(&s, "svc", &trace_at(0.70), None));
        assert!(!sampled(&s, "svc", &trace_at(0.70), Some(1)));
        assert!(sampled(&s, "svc", &trace_at(0.80), Some(0)));
        // Whatever a lower ratio samples, a higher one samples too.
        let vars = [
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ];
        let half = sampler(&SamplingConfig::default(), &vars);
        for share in [0.0, 0.3, 0.5, 0.7, 0.76, 0.99] {
            let id = trace_at(share);
            assert!(!sampled(&s, "svc", &id, None) || sampled(&half, "svc", &id, None));
        }
    }

    #[test]
    fn service_rules_match_in_order() {
        let config = SamplingConfig {
            sampler: Some(SamplerName::ParentBasedTraceIdRatio),
            ratio: Some(0.1),
            rules: vec![
                SamplingRule {
                    service: "checkout*".into(),
                    ratio: 1.0,
                },
                SamplingRule {
                    service: "*".into(),
                    ratio: 0.0,
                },
            ],
            ..SamplingConfig::default()
        };
        let s = sampler(&config, &[]);
        assert_eq!(s.service_threshold("checkout-api"), Some(0));
        assert_eq!(s.service_threshold("cart"), Some(THRESHOLD_NEVER));
        // The kernel looks up per-process thresholds only when rules exist.
        assert_eq!(
            s.kernel_settings(),
            (PARENT_BASED | SERVICE_RULES, ratio_threshold(0.1))
        );
        assert!(sampled(&s, "checkout", &trace_at(0.0), None));
        assert!(!sampled(&s, "cart", &trace_at(0.99), None));
        // The parent still decides under a parent-based sampler.
        assert!(sampled(&s, "cart", &trace_at(0.0), Some(1)));
        let bad = SamplingConfig {
            rules: vec![SamplingRule {
                service: "[".into(),
                ratio: 1.0,
            }],
            ..SamplingConfig::default()
        };
        assert!(matches!(
            HeadSampler::new(&bad, env(&[])),
            Err(SamplingError::Glob { index: 0, .. })
        ));
    }
}
