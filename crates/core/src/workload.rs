//! Pod specs, and the JSON field path of every container, out of any workload object.
//!
//! Reads only the fields it needs through borrowed partial structs, so the same code serves the
//! admission hot path (straight from the request bytes or a `serde_json::Value`) and the offline
//! checker, without deserializing whole Kubernetes objects.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer};

/// Which list of a pod spec a container sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerList {
    Containers,
    InitContainers,
    EphemeralContainers,
}

impl ContainerList {
    fn field(self) -> &'static str {
        match self {
            ContainerList::Containers => "containers",
            ContainerList::InitContainers => "initContainers",
            ContainerList::EphemeralContainers => "ephemeralContainers",
        }
    }
}

/// Where a pod spec lives inside its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecPath {
    /// Pod: `spec`
    Pod,
    /// PodTemplate: `template.spec`
    PodTemplate,
    /// Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, ReplicationController and any
    /// custom kind with a pod template: `spec.template.spec`
    Template,
    /// CronJob and any custom kind with a job template: `spec.jobTemplate.spec.template.spec`
    JobTemplate,
}

impl SpecPath {
    fn as_str(self) -> &'static str {
        match self {
            SpecPath::Pod => "spec",
            SpecPath::PodTemplate => "template.spec",
            SpecPath::Template => "spec.template.spec",
            SpecPath::JobTemplate => "spec.jobTemplate.spec.template.spec",
        }
    }
}

/// The JSON field path of one container, e.g. `spec.template.spec.initContainers[1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FieldPath {
    pub spec: SpecPath,
    pub list: ContainerList,
    pub index: usize,
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}[{}]", self.spec.as_str(), self.list.field(), self.index)
    }
}

/// One container of a workload: its name, its image as written, its pull policy, and where
/// it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container<'a> {
    pub name: Cow<'a, str>,
    /// `None` when the field is absent; an absent image is a violation, never skipped.
    pub image: Option<Cow<'a, str>>,
    pub pull_policy: PullPolicy<'a>,
    pub field: FieldPath,
}

/// A container's `imagePullPolicy`, as far as the source tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullPolicy<'a> {
    /// Written in the object (the API server has defaulted it by the time a webhook sees it).
    Set(Cow<'a, str>),
    /// Absent from a manifest: the API server will default it from the image.
    Unset,
    /// The source carries no pull policy at all (ImageReview): pull-policy rules do not apply.
    Unknown,
}

impl PullPolicy<'_> {
    fn into_owned(self) -> PullPolicy<'static> {
        match self {
            PullPolicy::Set(p) => PullPolicy::Set(Cow::Owned(p.into_owned())),
            PullPolicy::Unset => PullPolicy::Unset,
            PullPolicy::Unknown => PullPolicy::Unknown,
        }
    }
}

/// What the engine needs of an object: its identity and its containers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Workload<'a> {
    pub kind: Cow<'a, str>,
    pub name: Cow<'a, str>,
    pub generate_name: Cow<'a, str>,
    pub namespace: Option<Cow<'a, str>>,
    /// `metadata.deletionTimestamp` is set: the object is being deleted.
    pub deleting: bool,
    pub containers: Vec<Container<'a>>,
}

impl<'a> Workload<'a> {
    /// Reads a workload from any serde source (JSON text, a `serde_json::Value`, ...).
    /// `kind` overrides the object's own `kind` field (admission requests carry it apart).
    pub fn read<D: Deserializer<'a>>(kind: Option<&str>, source: D) -> Result<Self, D::Error> {
        RawObject::deserialize(source).map(|object| Self::from_raw(kind, object))
    }

    /// Builds the workload from the fields of its object, as any reader found them (serde
    /// above, the block-YAML reader of `check`).
    pub fn from_raw(kind: Option<&str>, object: RawObject<'a>) -> Self {
        let kind: Cow<'a, str> = match (kind, object.kind) {
            (Some(k), _) => Cow::Owned(k.to_owned()),
            (None, Some(k)) => k.0,
            (None, None) => Cow::Borrowed(""),
        };
        let mut containers = Vec::new();
        if kind == "Pod" {
            if let Some(spec) = object.spec.as_ref() {
                spec.collect(SpecPath::Pod, &mut containers);
            }
        } else {
            if let Some(spec) = object.template.and_then(|t| t.spec) {
                spec.collect(SpecPath::PodTemplate, &mut containers);
            }
            if let Some(spec) = object.spec {
                if let Some(pod) = spec.template.and_then(|t| t.spec) {
                    pod.collect(SpecPath::Template, &mut containers);
                }
                if let Some(pod) = spec.job_template.and_then(|j| j.spec).and_then(|j| j.template).and_then(|t| t.spec)
                {
                    pod.collect(SpecPath::JobTemplate, &mut containers);
                }
            }
        }
        let meta = object.metadata.unwrap_or_default();
        Workload {
            kind,
            name: meta.name.map(|t| t.0).unwrap_or_default(),
            generate_name: meta.generate_name.map(|t| t.0).unwrap_or_default(),
            namespace: meta.namespace.map(|t| t.0),
            deleting: meta.deletion_timestamp.is_some(),
            containers,
        }
    }

    /// Detaches the workload from the object it was read from.
    pub fn into_owned(self) -> Workload<'static> {
        let own = |c: Cow<'_, str>| Cow::Owned(c.into_owned());
        Workload {
            kind: own(self.kind),
            name: own(self.name),
            generate_name: own(self.generate_name),
            namespace: self.namespace.map(own),
            deleting: self.deleting,
            containers: self
                .containers
                .into_iter()
                .map(|c| Container {
                    name: own(c.name),
                    image: c.image.map(own),
                    pull_policy: c.pull_policy.into_owned(),
                    field: c.field,
                })
                .collect(),
        }
    }
}

/// The fields of an object that a workload is made of; every field is optional, as in serde.
#[derive(Deserialize, Default)]
pub struct RawObject<'a> {
    #[serde(borrow, default)]
    pub kind: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub metadata: Option<RawMeta<'a>>,
    #[serde(borrow, default)]
    pub spec: Option<RawSpec<'a>>,
    #[serde(borrow, default)]
    pub template: Option<RawTemplate<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RawMeta<'a> {
    #[serde(borrow, default)]
    pub name: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub generate_name: Option<Text<'a>>,
    #[serde(default)]
    pub deletion_timestamp: Option<serde::de::IgnoredAny>,
    #[serde(borrow, default)]
    pub namespace: Option<Text<'a>>,
}

/// A `spec`: a pod spec (Pod, and inside templates) or a holder of templates (everything else).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RawSpec<'a> {
    #[serde(borrow, default)]
    pub containers: Option<Vec<RawContainer<'a>>>,
    #[serde(borrow, default)]
    pub init_containers: Option<Vec<RawContainer<'a>>>,
    #[serde(borrow, default)]
    pub ephemeral_containers: Option<Vec<RawContainer<'a>>>,
    #[serde(borrow, default)]
    pub template: Option<Box<RawTemplate<'a>>>,
    #[serde(borrow, default)]
    pub job_template: Option<Box<RawJobTemplate<'a>>>,
}

#[derive(Deserialize, Default)]
pub struct RawTemplate<'a> {
    #[serde(borrow, default)]
    pub spec: Option<RawSpec<'a>>,
}

#[derive(Deserialize, Default)]
pub struct RawJobTemplate<'a> {
    #[serde(borrow, default)]
    pub spec: Option<RawJobSpec<'a>>,
}

#[derive(Deserialize, Default)]
pub struct RawJobSpec<'a> {
    #[serde(borrow, default)]
    pub template: Option<RawTemplate<'a>>,
}

impl<'a> RawSpec<'a> {
    fn collect(&self, spec: SpecPath, out: &mut Vec<Container<'a>>) {
        // Init containers run first, so they are listed (and reported) first.
        let lists = [
            (ContainerList::InitContainers, &self.init_containers),
            (ContainerList::Containers, &self.containers),
            (ContainerList::EphemeralContainers, &self.ephemeral_containers),
        ];
        for (list, containers) in lists {
            for (index, c) in containers.iter().flatten().enumerate() {
                out.push(Container {
                    name: c.name.clone().map(|t| t.0).unwrap_or_default(),
                    image: c.image.clone().map(|t| t.0),
                    pull_policy: match &c.image_pull_policy {
                        // An empty string is what the API server would default too.
                        Some(p) if !p.0.is_empty() => PullPolicy::Set(p.0.clone()),
                        _ => PullPolicy::Unset,
                    },
                    field: FieldPath { spec, list, index },
                });
            }
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RawContainer<'a> {
    #[serde(borrow, default)]
    pub name: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub image: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub image_pull_policy: Option<Text<'a>>,
}

/// A string that borrows from the input when it can. (`Option<Cow<str>>` always copies in
/// serde; this visitor takes the borrowed form whenever the deserializer offers it.)
#[derive(Clone)]
pub struct Text<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Visitor(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(kind: Option<&str>, object: &serde_json::Value) -> Vec<(String, String, Option<String>)> {
        Workload::read(kind, object)
            .expect("readable workload")
            .containers
            .into_iter()
            .map(|c| (c.field.to_string(), c.name.into_owned(), c.image.map(Cow::into_owned)))
            .collect()
    }

    fn pod_spec() -> serde_json::Value {
        json!({
            "initContainers": [{"name": "init", "image": "busybox"}],
            "containers": [{"name": "app", "image": "app:v1"}, {"name": "side", "image": "side:v2"}],
            "ephemeralContainers": [{"name": "debugger", "image": "debug"}]
        })
    }

    fn s(v: &str) -> String {
        v.to_owned()
    }

    #[test]
    fn pod_lists_every_container_kind_with_its_path() {
        let pod = json!({"kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}, "spec": pod_spec()});
        assert_eq!(
            fields(None, &pod),
            vec![
                (s("spec.initContainers[0]"), s("init"), Some(s("busybox"))),
                (s("spec.containers[0]"), s("app"), Some(s("app:v1"))),
                (s("spec.containers[1]"), s("side"), Some(s("side:v2"))),
                (s("spec.ephemeralContainers[0]"), s("debugger"), Some(s("debug"))),
            ]
        );
        let w = Workload::read(None, &pod).unwrap();
        assert_eq!((&*w.kind, &*w.name, w.namespace.as_deref()), ("Pod", "p", Some("ns")));
    }

    #[test]
    fn every_template_location() {
        for kind in ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job", "Rollout"]
        {
            let obj = json!({"kind": kind, "spec": {"template": {"spec": pod_spec()}}});
            let got = fields(None, &obj);
            assert_eq!(got.len(), 4, "{kind}");
            assert_eq!(got[1].0, "spec.template.spec.containers[0]", "{kind}");
        }
        let cron = json!({"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {"spec": pod_spec()}}}}});
        assert_eq!(fields(None, &cron)[0].0, "spec.jobTemplate.spec.template.spec.initContainers[0]");
        let template = json!({"kind": "PodTemplate", "template": {"spec": pod_spec()}});
        assert_eq!(fields(None, &template)[3].0, "template.spec.ephemeralContainers[0]");
    }

    #[test]
    fn kind_argument_overrides_and_pod_spec_is_only_read_for_pods() {
        let obj = json!({"spec": pod_spec()});
        assert_eq!(fields(Some("Pod"), &obj).len(), 4);
        assert!(fields(Some("Deployment"), &obj).is_empty());
        assert!(fields(None, &json!({"kind": "ConfigMap", "data": {"a": "b"}})).is_empty());
    }

    #[test]
    fn missing_image_is_kept_not_skipped() {
        let pod = json!({"kind": "Pod", "spec": {"containers": [{"name": "x"}]}});
        assert_eq!(fields(None, &pod), vec![(s("spec.containers[0]"), s("x"), None)]);
    }

    #[test]
    fn reads_from_json_text_without_copying() {
        let text =
            r#"{"kind":"Pod","metadata":{"generateName":"web-"},"spec":{"containers":[{"name":"a","image":"nginx"}]}}"#;
        let mut de = serde_json::Deserializer::from_str(text);
        let w = Workload::read(None, &mut de).unwrap();
        assert_eq!(&*w.generate_name, "web-");
        assert!(matches!(w.containers[0].image, Some(Cow::Borrowed("nginx"))));
    }

    #[test]
    fn pull_policy_is_read_per_container() {
        let pod = json!({"kind": "Pod", "spec": {
            "initContainers": [{"name": "i", "image": "a", "imagePullPolicy": "Always"}],
            "containers": [{"name": "x", "image": "b"}, {"name": "y", "image": "c", "imagePullPolicy": "IfNotPresent"}]}});
        let w = Workload::read(None, &pod).unwrap();
        let policies: Vec<&PullPolicy<'_>> = w.containers.iter().map(|c| &c.pull_policy).collect();
        assert_eq!(
            policies,
            [&PullPolicy::Set("Always".into()), &PullPolicy::Unset, &PullPolicy::Set("IfNotPresent".into())]
        );
        assert_eq!(w.into_owned().containers[2].pull_policy, PullPolicy::Set("IfNotPresent".into()));
    }

    #[test]
    fn wrong_types_are_errors_not_silence() {
        let pod = json!({"kind": "Pod", "spec": {"containers": [{"name": "x", "image": 5}]}});
        assert!(Workload::read(None, &pod).is_err());
        let pod = json!({"kind": "Pod", "spec": {"containers": "nope"}});
        assert!(Workload::read(None, &pod).is_err());
    }
}
