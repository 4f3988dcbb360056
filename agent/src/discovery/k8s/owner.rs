//! Which workload a pod belongs to. A pod names its direct controller in
//! `ownerReferences`; for a ReplicaSet the Deployment above it comes from
//! the ReplicaSet's own owner (a `get` the watcher makes and caches), and
//! for a Job the CronJob above it from the Job's name, which the CronJob
//! controller always forms as `<cronjob>-<scheduled minute>` (reading Jobs
//! would need one more RBAC grant for one name).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

/// A controller of a pod.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    /// `Deployment`, `ReplicaSet`, `StatefulSet`, `DaemonSet`, `Job`,
    /// `CronJob`, or any custom kind.
    pub kind: String,
    /// Object name.
    pub name: String,
}

impl Owner {
    /// An owner of that kind and name.
    pub fn new(kind: &str, name: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The `k8s.<kind>.name` resource attribute for the kinds the semantic
    /// conventions define.
    pub fn attribute_key(&self) -> Option<&'static str> {
        Some(match self.kind.as_str() {
            "Deployment" => "k8s.deployment.name",
            "ReplicaSet" => "k8s.replicaset.name",
            "StatefulSet" => "k8s.statefulset.name",
            "DaemonSet" => "k8s.daemonset.name",
            "Job" => "k8s.job.name",
            "CronJob" => "k8s.cronjob.name",
            _ => return None,
        })
    }
}

/// The managing controller among owner references: the one marked
/// `controller: true` (there is at most one), else the first.
pub fn controller(references: &[OwnerReference]) -> Option<Owner> {
    references
        .iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| references.first())
        .map(|r| Owner::new(&r.kind, &r.name))
}

/// The Deployment of a ReplicaSet, when the ReplicaSet could not be read:
/// the Deployment controller names its ReplicaSets
/// `<deployment>-<pod-template-hash>` and labels their pods with the hash.
pub fn deployment_from_hash(replicaset: &str, pod_template_hash: Option<&str>) -> Option<Owner> {
    let deployment = replicaset
        .strip_suffix(pod_template_hash?)?
        .strip_suffix('-')?;
    (!deployment.is_empty()).then(|| Owner::new("Deployment", deployment))
}

/// The CronJob that created a Job, from the Job's name: `<cronjob>-<n>`
/// where `n` is the scheduled time in minutes since the epoch (8 digits
/// until the year 2160). Hand-made Jobs rarely end in 8 digits.
pub fn cronjob_from_job(job: &str) -> Option<Owner> {
    let (cronjob, minutes) = job.rsplit_once('-')?;
    let scheduled = minutes.len() >= 8 && minutes.bytes().all(|b| b.is_ascii_digit());
    (scheduled && !cronjob.is_empty()).then(|| Owner::new("CronJob", cronjob))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(kind: &str, name: &str, controller: Option<bool>) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: "u".into(),
            controller,
            block_owner_deletion: None,
        }
    }

    #[test]
    fn picks_the_managing_controller() {
        let refs = [
            reference("ConfigMap", "c", None),
            reference("ReplicaSet", "web-7d4b9c8f5", Some(true)),
        ];
        assert_eq!(
            controller(&refs),
            Some(Owner::new("ReplicaSet", "web-7d4b9c8f5"))
        );
        assert_eq!(controller(&refs[..1]), Some(Owner::new("ConfigMap", "c")));
        assert_eq!(controller(&[]), None);
    }

    #[test]
    fn derives_deployments_and_cronjobs_from_names() {
        assert_eq!(
            deployment_from_hash("web-api-7d4b9c8f5", Some("7d4b9c8f5")),
            Some(Owner::new("Deployment", "web-api"))
        );
        assert_eq!(deployment_from_hash("web-api-7d4b9c8f5", None), None);
        assert_eq!(deployment_from_hash("standalone", Some("7d4b9c8f5")), None);
        assert_eq!(
            cronjob_from_job("nightly-report-29012345"),
            Some(Owner::new("CronJob", "nightly-report"))
        );
        assert_eq!(cronjob_from_job("migrate-2"), None);
        assert_eq!(cronjob_from_job("29012345"), None);
    }

    #[test]
    fn maps_kinds_to_conventional_attributes() {
        assert_eq!(
            Owner::new("StatefulSet", "db").attribute_key(),
            Some("k8s.statefulset.name")
        );
        assert_eq!(Owner::new("Rollout", "x").attribute_key(), None);
    }
}
