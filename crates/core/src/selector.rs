//! Label selectors compiled once, and the namespace a workload is in as far as its labels are
//! known: a selector whose labels are unknown is taken to match, so a policy only restricts.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// The label the API server sets on every Namespace; no namespace owner can forge it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A compiled `LabelSelector`: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Selector(pub(crate) Vec<Requirement>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SelectorError {
    #[error("matchExpressions[{0}]: operator {1:?} must be In, NotIn, Exists or DoesNotExist")]
    Operator(usize, String),
    #[error("matchExpressions[{0}]: operator {1} needs at least one value")]
    NeedsValues(usize, &'static str),
    #[error("matchExpressions[{0}]: operator {1} takes no values")]
    TakesNoValues(usize, &'static str),
}

impl Selector {
    pub(crate) fn compile(selector: &LabelSelector) -> Result<Self, SelectorError> {
        let mut requirements: Vec<Requirement> =
            selector.match_labels.iter().flatten().map(|(k, v)| Requirement::In(k.clone(), vec![v.clone()])).collect();
        for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
            let values = e.values.clone().unwrap_or_default();
            let key = e.key.clone();
            requirements.push(match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(SelectorError::NeedsValues(i, if e.operator == "In" { "In" } else { "NotIn" }));
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    let op = if e.operator == "Exists" { "Exists" } else { "DoesNotExist" };
                    return Err(SelectorError::TakesNoValues(i, op));
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => return Err(SelectorError::Operator(i, other.to_owned())),
            });
        }
        Ok(Selector(requirements))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn matches<'a>(&self, label: impl Fn(&str) -> Label<'a>) -> bool {
        self.0.iter().all(|r| match label(r.key()) {
            Known(value) => r.holds(value),
            Unknown => true,
        })
    }
}

impl Requirement {
    pub(crate) fn key(&self) -> &str {
        match self {
            Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::DoesNotExist(k) => k,
        }
    }

    /// Whether a label with this value (`None`: absent) satisfies the requirement.
    pub(crate) fn holds(&self, value: Option<&str>) -> bool {
        match self {
            Requirement::In(_, values) => value.is_some_and(|v| values.iter().any(|x| x == v)),
            Requirement::NotIn(_, values) => value.is_none_or(|v| values.iter().all(|x| x != v)),
            Requirement::Exists(_) => value.is_some(),
            Requirement::DoesNotExist(_) => value.is_none(),
        }
    }
}

/// A namespace label as far as it is known.
pub(crate) enum Label<'a> {
    Known(Option<&'a str>),
    /// The namespace's labels are not known yet: any requirement on them may hold.
    Unknown,
}
use Label::{Known, Unknown};

/// The namespace a workload is in, with its labels when they are known.
#[derive(Debug, Clone, Copy)]
pub struct Namespace<'a> {
    pub name: &'a str,
    /// `None` when the labels are not known (the namespace is not in the cache yet): policies
    /// with a selector then apply, since adding a policy may only ever restrict.
    pub labels: Option<&'a BTreeMap<String, String>>,
}

impl<'a> Namespace<'a> {
    pub(crate) fn label(&self, labels: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
        match labels.get(key) {
            Some(v) => Some(v),
            // The API server always sets it; synthesize it for namespaces read from files.
            None if key == NAMESPACE_NAME_LABEL => Some(self.name),
            None => None,
        }
    }
}
