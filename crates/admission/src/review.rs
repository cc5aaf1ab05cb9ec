//! AdmissionReview (`admission.k8s.io/v1`) and ImageReview (`imagepolicy.k8s.io/v1alpha1`) in,
//! response out. PURE: the caller passes the request bytes, the policy snapshot and the time.
//!
//! Reviews are read through borrowed partial structs: only the fields trustgate needs are
//! decoded, strings borrow from the request body, and the object is kept as raw JSON until the
//! workload reader walks it. Anything that is not a well-formed review is a [`ReviewError`]
//! (HTTP 400); a well-formed review whose object cannot be read is denied, never admitted.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use trustgate_core::api::Mode;

use trustgate_core::engine::snapshot::Snapshot;
use trustgate_core::engine::{Decision, Inheritance, Subject, Verdict, Violation};

use crate::inheritance::{self, ControllerIdentities, ControllerRef};
use trustgate_core::workload::{Container, ContainerList, FieldPath, PullPolicy, SpecPath, Workload};

/// `apiVersion` of the AdmissionReviews trustgate answers.
pub(crate) const ADMISSION_API_VERSION: &str = "admission.k8s.io/v1";
/// `apiVersion` of ImageReviews.
pub(crate) const IMAGE_REVIEW_API_VERSION: &str = "imagepolicy.k8s.io/v1alpha1";
const ADMISSION_KIND: &str = "AdmissionReview";
const IMAGE_REVIEW_KIND: &str = "ImageReview";
/// The only subresource whose requests carry images to check (`kubectl debug`).
const EPHEMERAL_CONTAINERS: &str = "ephemeralcontainers";
/// The ImageReview audit annotation that carries Warn violations.
pub(crate) const WARNINGS_ANNOTATION: &str = "trustgate-warnings";

/// Why a request body is not a review trustgate can answer (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("body is not a valid {expected}: {error}")]
    Json { expected: &'static str, error: serde_json::Error },
    #[error(
        "expected apiVersion {expected_api_version:?} kind {expected_kind:?}, got apiVersion {api_version:?} kind {kind:?}"
    )]
    WrongType { expected_api_version: &'static str, expected_kind: &'static str, api_version: String, kind: String },
    #[error("AdmissionReview has no request")]
    MissingRequest,
    #[error("AdmissionReview request has no uid")]
    MissingUid,
    #[error("AdmissionReview request has no kind.kind")]
    MissingKind,
    #[error("AdmissionReview request operation {0:?} is not CREATE, UPDATE, DELETE or CONNECT")]
    Operation(String),
    #[error("ImageReview has no spec")]
    MissingSpec,
}

/// The operation of an admission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
        }
    }

    fn parse(s: &str) -> Result<Self, ReviewError> {
        match s {
            "CREATE" => Ok(Operation::Create),
            "UPDATE" => Ok(Operation::Update),
            "DELETE" => Ok(Operation::Delete),
            "CONNECT" => Ok(Operation::Connect),
            other => Err(ReviewError::Operation(other.to_owned())),
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What was decided about one review, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not checked: DELETE, CONNECT, a subresource other than `ephemeralcontainers`, or an
    /// UPDATE of an object that is being deleted.
    Skipped,
    /// The object's containers were evaluated.
    Evaluated(Decision),
    /// The object could not be read, so it is denied.
    Unreadable(String),
}

impl Outcome {
    pub fn verdict(&self) -> Verdict {
        match self {
            Outcome::Skipped => Verdict::Allow,
            Outcome::Evaluated(decision) => decision.verdict(),
            Outcome::Unreadable(_) => Verdict::Deny,
        }
    }

    pub fn violations(&self) -> &[Violation] {
        match self {
            Outcome::Evaluated(decision) => &decision.violations,
            Outcome::Skipped | Outcome::Unreadable(_) => &[],
        }
    }
}

/// A review answered: what was decided, and the response body to send.
#[derive(Debug, Clone)]
pub struct Answer {
    pub outcome: Outcome,
    /// The response review, serialized as JSON.
    pub body: Vec<u8>,
    /// The request was a controller's CREATE from an admitted template (existingImages):
    /// the controller and the owner, for the decision's log line. Its violations say which
    /// policies let it through (`Violation::inherited`).
    pub inherited: Option<InheritedFrom>,
}

/// Who created an object that inherited its owner's admission, and from which owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InheritedFrom {
    pub controller: String,
    /// `Kind/name` of the controller ownerReference.
    pub owner: String,
}

// ---------------------------------------------------------------------------------------------
// AdmissionReview

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAdmissionReview<'a> {
    #[serde(borrow, default)]
    api_version: Cow<'a, str>,
    #[serde(borrow, default)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    request: Option<RawAdmissionRequest<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAdmissionRequest<'a> {
    #[serde(borrow, default)]
    uid: Cow<'a, str>,
    #[serde(borrow, default)]
    kind: Option<RawGroupVersionKind<'a>>,
    #[serde(borrow, default)]
    sub_resource: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    namespace: Cow<'a, str>,
    #[serde(borrow, default)]
    operation: Cow<'a, str>,
    #[serde(default)]
    dry_run: Option<bool>,
    #[serde(borrow, default)]
    object: Option<&'a RawValue>,
    #[serde(borrow, default)]
    old_object: Option<&'a RawValue>,
    #[serde(borrow, default)]
    user_info: Option<RawUserInfo<'a>>,
}

#[derive(Deserialize)]
struct RawGroupVersionKind<'a> {
    #[serde(borrow, default)]
    group: Cow<'a, str>,
    #[serde(borrow, default)]
    kind: Cow<'a, str>,
}

#[derive(Deserialize)]
struct RawUserInfo<'a> {
    #[serde(borrow, default)]
    username: Cow<'a, str>,
}

/// Just the ownerReferences of an object (read only for the CREATEs that may inherit).
#[derive(Deserialize)]
struct RawOwned<'a> {
    #[serde(borrow, default)]
    metadata: Option<RawOwnedMeta<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawOwnedMeta<'a> {
    #[serde(borrow, default)]
    owner_references: Option<Vec<RawOwnerReference<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawOwnerReference<'a> {
    #[serde(borrow, default)]
    api_version: Cow<'a, str>,
    #[serde(borrow, default)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Cow<'a, str>,
    #[serde(default)]
    controller: Option<bool>,
}

/// An AdmissionReview's request, borrowed from the request body.
#[derive(Debug, Clone)]
pub struct AdmissionRequest<'a> {
    pub uid: Cow<'a, str>,
    /// `request.kind.kind`: the kind of the object as the webhook registered it.
    pub kind: Cow<'a, str>,
    /// `request.kind.group` (empty for the core group).
    pub group: Cow<'a, str>,
    /// `request.userInfo.username`: who sent the request.
    pub username: Cow<'a, str>,
    pub namespace: Cow<'a, str>,
    pub name: Cow<'a, str>,
    pub operation: Operation,
    pub sub_resource: Cow<'a, str>,
    pub dry_run: bool,
    object: Option<&'a RawValue>,
    old_object: Option<&'a RawValue>,
}

impl<'a> AdmissionRequest<'a> {
    /// Reads an `admission.k8s.io/v1` AdmissionReview.
    pub fn parse(body: &'a [u8]) -> Result<Self, ReviewError> {
        let review: RawAdmissionReview<'a> =
            serde_json::from_slice(body).map_err(|error| ReviewError::Json { expected: "AdmissionReview", error })?;
        if review.api_version != ADMISSION_API_VERSION || review.kind != ADMISSION_KIND {
            return Err(ReviewError::WrongType {
                expected_api_version: ADMISSION_API_VERSION,
                expected_kind: ADMISSION_KIND,
                api_version: review.api_version.into_owned(),
                kind: review.kind.into_owned(),
            });
        }
        let request = review.request.ok_or(ReviewError::MissingRequest)?;
        if request.uid.is_empty() {
            return Err(ReviewError::MissingUid);
        }
        let (group, kind) =
            request.kind.map(|k| (k.group, k.kind)).filter(|(_, k)| !k.is_empty()).ok_or(ReviewError::MissingKind)?;
        Ok(AdmissionRequest {
            uid: request.uid,
            kind,
            group,
            username: request.user_info.map(|u| u.username).unwrap_or_default(),
            namespace: request.namespace,
            name: request.name,
            operation: Operation::parse(&request.operation)?,
            sub_resource: request.sub_resource,
            dry_run: request.dry_run.unwrap_or(false),
            object: request.object,
            old_object: request.old_object,
        })
    }

    /// [`Self::review_with`] the built-in controller identities.
    pub fn review(&self, snapshot: &Snapshot, now: Timestamp) -> Answer {
        self.review_with(snapshot, &ControllerIdentities::BuiltIn, now)
    }

    /// Decides the request against `snapshot` and builds the response review. A dry run is
    /// decided like any other request: the webhook has no side effects. A CREATE that
    /// `controllers` made from an admitted template inherits that admission (existingImages).
    pub fn review_with(&self, snapshot: &Snapshot, controllers: &ControllerIdentities, now: Timestamp) -> Answer {
        let mut inherited = None;
        let (outcome, response) = if !self.is_checked() {
            (Outcome::Skipped, AdmissionResponse::allowed(&self.uid, Vec::new()))
        } else {
            match self.read_object() {
                Err(message) => {
                    let response = AdmissionResponse::denied(&self.uid, 400, "BadRequest", message.clone());
                    (Outcome::Unreadable(message), response)
                }
                // An object being deleted starts nothing new; its UPDATEs remove finalizers,
                // and denying them would leave it stuck in Terminating.
                Ok(workload) if workload.deleting && self.operation == Operation::Update => {
                    (Outcome::Skipped, AdmissionResponse::allowed(&self.uid, Vec::new()))
                }
                Ok(workload) => {
                    let namespace = self.object_namespace(&workload);
                    let old = self.old_containers();
                    let owner = self.inheriting_owner(controllers);
                    let from = owner.as_ref().map(|(kind, name)| Inheritance {
                        controller: &self.username,
                        owner_kind: kind,
                        owner_name: name,
                    });
                    let decision = snapshot.policies.evaluate_admission(
                        &snapshot.namespace(namespace),
                        &workload.containers,
                        &old,
                        from.as_ref(),
                        now,
                    );
                    if let Some(from) = from.filter(|_| decision.violations.iter().any(|v| v.inherited)) {
                        inherited = Some(InheritedFrom {
                            controller: from.controller.to_owned(),
                            owner: format!("{}/{}", from.owner_kind, from.owner_name),
                        });
                    }
                    // The object's own name fills in for requests that carry none (generateName).
                    let subject = Subject {
                        kind: self.object_kind(),
                        namespace,
                        name: if self.name.is_empty() { &workload.name } else { &self.name },
                        generate_name: &workload.generate_name,
                    };
                    let response = match decision.denial(&subject) {
                        Some(message) => AdmissionResponse::denied(&self.uid, 403, "Forbidden", message),
                        None => AdmissionResponse::allowed(&self.uid, decision.warnings(&subject)),
                    };
                    (Outcome::Evaluated(decision), response)
                }
            }
        };
        let size = response.status.as_ref().map_or(0, |s| s.message.len())
            + response.warnings.iter().map(String::len).sum::<usize>();
        let body =
            to_json(&AdmissionReviewOut { api_version: ADMISSION_API_VERSION, kind: ADMISSION_KIND, response }, size);
        Answer { outcome, body, inherited }
    }

    /// The owner (kind, name) whose admission this request inherits, when it is a CREATE (no
    /// subresource) that one of `controllers` made with a controller ownerReference the owner
    /// table allows. The owner references are read only then: every other request is checked
    /// in full.
    fn inheriting_owner(&self, controllers: &ControllerIdentities) -> Option<(String, String)> {
        if self.operation != Operation::Create || !self.sub_resource.is_empty() || self.username.is_empty() {
            return None;
        }
        // Cheap test first: the username must be a controller for some owner at all.
        if !matches!(&*self.kind, "Pod" | "ReplicaSet" | "Job") {
            return None;
        }
        let object = self.object?;
        let owned: RawOwned<'_> = serde_json::from_str(object.get()).ok()?;
        let references = owned.metadata?.owner_references?;
        // At most one reference may be the controller (the API server refuses more).
        let reference = references.iter().find(|r| r.controller == Some(true))?;
        let owner = ControllerRef { api_version: &reference.api_version, kind: &reference.kind, name: &reference.name };
        let found = inheritance::inheritance(controllers, &self.username, &self.group, &self.kind, Some(owner))?;
        Some((found.owner_kind.to_owned(), found.owner_name.to_owned()))
    }

    /// Whether this request carries an object to check.
    fn is_checked(&self) -> bool {
        matches!(self.operation, Operation::Create | Operation::Update)
            && (self.sub_resource.is_empty() || self.sub_resource == EPHEMERAL_CONTAINERS)
    }

    /// The kind the object is read as: `pods/ephemeralcontainers` carries a Pod (older API
    /// servers name its kind `EphemeralContainers`).
    fn object_kind(&self) -> &str {
        if self.sub_resource == EPHEMERAL_CONTAINERS { "Pod" } else { &self.kind }
    }

    fn read_object(&self) -> Result<Workload<'a>, String> {
        let kind = self.object_kind();
        let subject = Subject { kind, namespace: &self.namespace, name: &self.name, generate_name: "" };
        let Some(object) = self.object.filter(|o| o.get() != "null") else {
            return Err(format!("{subject}: the {} request carries no object to check", self.operation));
        };
        let mut deserializer = serde_json::Deserializer::from_str(object.get());
        Workload::read(Some(kind), &mut deserializer).map_err(|e| format!("{subject}: cannot read the object: {e}"))
    }

    /// The containers of an UPDATE's old object, for existingImages. Empty for CREATE, and
    /// when the old object is absent or unreadable: then every image is checked as new, so a
    /// malformed oldObject can only make a decision stricter, never admit by accident.
    fn old_containers(&self) -> Vec<Container<'a>> {
        if self.operation != Operation::Update {
            return Vec::new();
        }
        let Some(old) = self.old_object.filter(|o| o.get() != "null") else { return Vec::new() };
        let mut deserializer = serde_json::Deserializer::from_str(old.get());
        Workload::read(Some(self.object_kind()), &mut deserializer).map(|w| w.containers).unwrap_or_default()
    }

    fn object_namespace<'s>(&'s self, workload: &'s Workload<'_>) -> &'s str {
        match (&*self.namespace, workload.namespace.as_deref()) {
            ("", Some(ns)) => ns,
            (ns, _) => ns,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AdmissionReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: AdmissionResponse<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AdmissionResponse<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

/// A `meta/v1` Status, as the API server shows it to the user.
#[derive(Serialize)]
struct Status {
    status: &'static str,
    code: u16,
    reason: &'static str,
    message: String,
}

impl<'a> AdmissionResponse<'a> {
    fn allowed(uid: &'a str, warnings: Vec<String>) -> Self {
        AdmissionResponse { uid, allowed: true, status: None, warnings }
    }

    fn denied(uid: &'a str, code: u16, reason: &'static str, message: String) -> Self {
        AdmissionResponse {
            uid,
            allowed: false,
            status: Some(Status { status: "Failure", code, reason, message }),
            warnings: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ImageReview

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawImageReview<'a> {
    #[serde(borrow, default)]
    api_version: Cow<'a, str>,
    #[serde(borrow, default)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    spec: Option<RawImageReviewSpec<'a>>,
}

#[derive(Deserialize)]
struct RawImageReviewSpec<'a> {
    #[serde(borrow, default)]
    containers: Vec<RawImageReviewContainer<'a>>,
    #[serde(borrow, default)]
    namespace: Cow<'a, str>,
}

#[derive(Deserialize)]
struct RawImageReviewContainer<'a> {
    #[serde(borrow, default)]
    image: Cow<'a, str>,
}

/// An ImageReview (the in-tree ImagePolicyWebhook admission plugin), borrowed from the body.
#[derive(Debug, Clone)]
pub struct ImageRequest<'a> {
    pub namespace: Cow<'a, str>,
    containers: Vec<Container<'a>>,
}

impl<'a> ImageRequest<'a> {
    /// Reads an `imagepolicy.k8s.io/v1alpha1` ImageReview.
    pub fn parse(body: &'a [u8]) -> Result<Self, ReviewError> {
        let review: RawImageReview<'a> =
            serde_json::from_slice(body).map_err(|error| ReviewError::Json { expected: "ImageReview", error })?;
        if review.api_version != IMAGE_REVIEW_API_VERSION || review.kind != IMAGE_REVIEW_KIND {
            return Err(ReviewError::WrongType {
                expected_api_version: IMAGE_REVIEW_API_VERSION,
                expected_kind: IMAGE_REVIEW_KIND,
                api_version: review.api_version.into_owned(),
                kind: review.kind.into_owned(),
            });
        }
        let spec = review.spec.ok_or(ReviewError::MissingSpec)?;
        let containers = spec
            .containers
            .into_iter()
            .enumerate()
            .map(|(index, c)| Container {
                name: Cow::Borrowed(""),
                // An empty image is kept: it fails to parse and is denied, never skipped.
                image: Some(c.image),
                // ImageReview names images only: pull-policy rules cannot apply.
                pull_policy: PullPolicy::Unknown,
                field: FieldPath { spec: SpecPath::Pod, list: ContainerList::Containers, index },
            })
            .collect();
        Ok(ImageRequest { namespace: spec.namespace, containers })
    }

    /// How many images the review asks about.
    pub fn images(&self) -> usize {
        self.containers.len()
    }

    /// Decides every image with the policies that select the review's namespace.
    pub fn review(&self, snapshot: &Snapshot, now: Timestamp) -> Answer {
        let decision = snapshot.policies.evaluate(&snapshot.namespace(&self.namespace), &self.containers, now);
        let denial = image_lines(&decision, Mode::Enforce);
        let warnings = image_lines(&decision, Mode::Warn);
        let mut audit_annotations = BTreeMap::new();
        if !warnings.is_empty() {
            audit_annotations.insert(WARNINGS_ANNOTATION, warnings.join("\n"));
        }
        let status = ImageReviewStatus {
            allowed: denial.is_empty(),
            reason: (!denial.is_empty()).then(|| denial.join("\n")),
            audit_annotations,
        };
        let size = status.reason.as_ref().map_or(0, String::len)
            + status.audit_annotations.values().map(String::len).sum::<usize>();
        let body =
            to_json(&ImageReviewOut { api_version: IMAGE_REVIEW_API_VERSION, kind: IMAGE_REVIEW_KIND, status }, size);
        Answer { outcome: Outcome::Evaluated(decision), body, inherited: None }
    }
}

/// Serializes a response into a buffer sized for it up front (`text`: the length of the strings
/// it carries; escaping may add a little).
fn to_json(response: &impl Serialize, text: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + text + text / 8);
    serde_json::to_writer(&mut out, response).expect("a review response always serializes");
    out
}

/// One line per violation of `mode` (`image "x" resolves to ...`), then each policy's message:
/// an ImageReview names images only, never containers or objects.
fn image_lines(decision: &Decision, mode: Mode) -> Vec<String> {
    let mut lines: Vec<String> = decision.in_mode(mode).map(|v| format!("image {:?} {}", v.image, v.reason)).collect();
    let mut seen: Vec<&str> = Vec::new();
    for v in decision.in_mode(mode) {
        if let Some(message) = v.policy_message.as_deref()
            && !seen.contains(&message)
        {
            seen.push(message);
            lines.push(message.to_owned());
        }
    }
    lines
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageReviewOut {
    api_version: &'static str,
    kind: &'static str,
    status: ImageReviewStatus,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageReviewStatus {
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    audit_annotations: BTreeMap<&'static str, String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use trustgate_core::engine::PolicySet;

    const POLICIES: &str = r#"
apiVersion: trustgate.dev/v1alpha1
kind: TrustedRegistryPolicy
metadata: {name: corporate}
spec:
  trustedRegistries: [registry.my.com, ghcr.io/my-org]
  message: "Use registry.my.com"
---
apiVersion: trustgate.dev/v1alpha1
kind: TrustedRegistryPolicy
metadata: {name: no-latest}
spec:
  mode: Warn
  trustedRegistries: ["*.io", "*.com"]
  tags: {deny: [latest]}
"#;

    fn snapshot() -> Snapshot {
        let policies = trustgate_manifest::manifest::parse_policies("p.yaml", POLICIES).unwrap();
        let (policies, errors) = PolicySet::compile(&policies);
        assert!(errors.is_empty(), "{errors:?}");
        Snapshot { policies, namespaces: None }
    }

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn review(request: Value) -> Value {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
    }

    fn pod(image: &str) -> Value {
        json!({"kind": "Pod", "metadata": {"name": "web", "namespace": "default"},
               "spec": {"containers": [{"name": "app", "image": image}]}})
    }

    fn answer(review: &Value) -> (Outcome, Value) {
        let body = serde_json::to_vec(review).unwrap();
        let request = AdmissionRequest::parse(&body).expect("a valid review");
        let answer = request.review(&snapshot(), now());
        (answer.outcome, serde_json::from_slice(&answer.body).unwrap())
    }

    fn pod_request(operation: &str, image: &str) -> Value {
        review(json!({"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                      "namespace": "default", "name": "web", "operation": operation, "object": pod(image)}))
    }

    /// A CREATE as kube-controller-manager sends it: `userInfo` and the object's owner.
    fn controller_create(kind: (&str, &str), user: &str, owner: Value, image: &str) -> Value {
        let spec = json!({"containers": [{"name": "app", "image": image}]});
        let object = match kind.1 {
            "Pod" => {
                json!({"kind": "Pod", "metadata": {"name": "legacy-x", "namespace": "default", "ownerReferences": [owner]}, "spec": spec})
            }
            _ => {
                json!({"kind": kind.1, "metadata": {"name": "legacy-x", "namespace": "default", "ownerReferences": [owner]},
                        "spec": {"template": {"spec": spec}}})
            }
        };
        review(json!({"uid": "u-2", "kind": {"group": kind.0, "version": "v1", "kind": kind.1},
                      "namespace": "default", "name": "", "operation": "CREATE",
                      "userInfo": {"username": user, "groups": ["system:serviceaccounts"]}, "object": object}))
    }

    fn owner_ref(api_version: &str, kind: &str, controller: bool) -> Value {
        json!({"apiVersion": api_version, "kind": kind, "name": "legacy", "uid": "u", "controller": controller})
    }

    const RS_CONTROLLER: &str = "system:serviceaccount:kube-system:replicaset-controller";

    #[test]
    fn a_controllers_create_from_an_admitted_template_is_allowed_with_a_warning_and_says_so() {
        let request =
            controller_create(("", "Pod"), RS_CONTROLLER, owner_ref("apps/v1", "ReplicaSet", true), "nginx:1.25");
        let body = serde_json::to_vec(&request).unwrap();
        let answer = AdmissionRequest::parse(&body).unwrap().review(&snapshot(), now());
        assert_eq!(answer.outcome.verdict(), Verdict::Warn);
        assert_eq!(
            answer.inherited,
            Some(InheritedFrom { controller: RS_CONTROLLER.to_owned(), owner: "ReplicaSet/legacy".to_owned() })
        );
        let out: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(out["response"]["allowed"], true);
        let warning = out["response"]["warnings"][0].as_str().unwrap();
        assert!(warning.contains("created it from the template of ReplicaSet \"legacy\""), "{warning}");
        // The same object, created by anyone else: checked in full.
        let request = controller_create(("", "Pod"), "alice", owner_ref("apps/v1", "ReplicaSet", true), "nginx:1.25");
        let (outcome, _) = answer_of(&request);
        assert_eq!(outcome.verdict(), Verdict::Deny);
    }

    fn answer_of(review: &Value) -> (Outcome, Option<InheritedFrom>) {
        let body = serde_json::to_vec(review).unwrap();
        let answer = AdmissionRequest::parse(&body).unwrap().review(&snapshot(), now());
        (answer.outcome, answer.inherited)
    }

    #[test]
    fn only_controller_creates_with_a_controller_reference_to_a_checked_owner_inherit() {
        let denied = |request: Value| {
            let (outcome, inherited) = answer_of(&request);
            assert_eq!((outcome.verdict(), inherited), (Verdict::Deny, None), "{request}");
        };
        // A non-controller reference, a custom owner, an owner whose controller does not
        // create this kind, no owner at all.
        denied(controller_create(("", "Pod"), RS_CONTROLLER, owner_ref("apps/v1", "ReplicaSet", false), "nginx:1.25"));
        denied(controller_create(
            ("", "Pod"),
            RS_CONTROLLER,
            owner_ref("example.com/v1", "ReplicaSet", true),
            "nginx:1.25",
        ));
        denied(controller_create(
            ("", "Pod"),
            "system:kube-controller-manager",
            owner_ref("apps/v1", "Deployment", true),
            "nginx:1.25",
        ));
        let mut no_owner =
            controller_create(("", "Pod"), RS_CONTROLLER, owner_ref("apps/v1", "ReplicaSet", true), "nginx:1.25");
        no_owner["request"]["object"]["metadata"].as_object_mut().unwrap().remove("ownerReferences");
        denied(no_owner);
        // An UPDATE by the controller is existingImages' business, not inheritance's.
        let mut update =
            controller_create(("", "Pod"), RS_CONTROLLER, owner_ref("apps/v1", "ReplicaSet", true), "nginx:1.25");
        update["request"]["operation"] = json!("UPDATE");
        denied(update);
        // The other controller kinds inherit the same way.
        let (outcome, inherited) = answer_of(&controller_create(
            ("apps", "ReplicaSet"),
            "system:serviceaccount:kube-system:deployment-controller",
            owner_ref("apps/v1", "Deployment", true),
            "nginx:1.25",
        ));
        assert_eq!(outcome.verdict(), Verdict::Warn);
        assert_eq!(inherited.unwrap().owner, "Deployment/legacy");
        let (outcome, _) = answer_of(&controller_create(
            ("batch", "Job"),
            "system:serviceaccount:kube-system:cronjob-controller",
            owner_ref("batch/v1", "CronJob", true),
            "nginx:1.25",
        ));
        assert_eq!(outcome.verdict(), Verdict::Warn);
        // A clean CREATE inherits nothing: nothing to report.
        let (outcome, inherited) = answer_of(&controller_create(
            ("", "Pod"),
            RS_CONTROLLER,
            owner_ref("apps/v1", "ReplicaSet", true),
            "registry.my.com/app:v1",
        ));
        assert_eq!((outcome.verdict(), inherited), (Verdict::Allow, None));
    }

    #[test]
    fn listed_controller_identities_replace_the_built_in_ones() {
        let listed = ControllerIdentities::from_flags(vec!["system:k3s-controller".to_owned()]);
        let request =
            controller_create(("", "Pod"), RS_CONTROLLER, owner_ref("apps/v1", "ReplicaSet", true), "nginx:1.25");
        let body = serde_json::to_vec(&request).unwrap();
        let parsed = AdmissionRequest::parse(&body).unwrap();
        assert_eq!(parsed.review_with(&snapshot(), &listed, now()).outcome.verdict(), Verdict::Deny);
        let request = controller_create(
            ("", "Pod"),
            "system:k3s-controller",
            owner_ref("apps/v1", "ReplicaSet", true),
            "nginx:1.25",
        );
        let body = serde_json::to_vec(&request).unwrap();
        let parsed = AdmissionRequest::parse(&body).unwrap();
        assert_eq!(parsed.review_with(&snapshot(), &listed, now()).outcome.verdict(), Verdict::Warn);
    }

    #[test]
    fn deny_echoes_uid_and_carries_403_with_the_message() {
        let (outcome, out) = answer(&pod_request("CREATE", "nginx:1.25"));
        assert_eq!(outcome.verdict(), Verdict::Deny);
        assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(out["kind"], "AdmissionReview");
        assert_eq!(out["response"]["uid"], "u-1");
        assert_eq!(out["response"]["allowed"], false);
        assert_eq!(out["response"]["status"]["code"], 403);
        assert_eq!(
            out["response"]["status"]["message"],
            "Pod default/web: container \"app\" (spec.containers[0]) image \"nginx:1.25\" resolves to docker.io/library/nginx:1.25, which policy \"corporate\" does not trust (trusted: registry.my.com, ghcr.io/my-org)\nUse registry.my.com"
        );
    }

    #[test]
    fn warn_violations_become_warnings_of_an_allowed_response() {
        let (outcome, out) = answer(&pod_request("UPDATE", "registry.my.com/app"));
        assert_eq!(outcome.verdict(), Verdict::Warn);
        assert_eq!(out["response"]["allowed"], true);
        assert!(out["response"].get("status").is_none());
        let warnings = out["response"]["warnings"].as_array().unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].as_str().unwrap().starts_with("Pod default/web: container \"app\""), "{warnings:?}");
    }

    #[test]
    fn trusted_images_are_allowed_without_status_or_warnings() {
        let (outcome, out) = answer(&pod_request("CREATE", "registry.my.com/app:v1"));
        assert_eq!(outcome, Outcome::Evaluated(Decision::default()));
        assert_eq!(out["response"], json!({"uid": "u-1", "allowed": true}));
    }

    #[test]
    fn delete_connect_and_other_subresources_are_allowed_untouched() {
        for operation in ["DELETE", "CONNECT"] {
            let (outcome, out) = answer(&pod_request(operation, "nginx"));
            assert_eq!(outcome, Outcome::Skipped, "{operation}");
            assert_eq!(out["response"]["allowed"], true);
        }
        let mut scale = pod_request("UPDATE", "nginx");
        scale["request"]["subResource"] = json!("scale");
        scale["request"]["object"] = json!({"kind": "Scale", "spec": {"replicas": 3}});
        assert_eq!(answer(&scale).0, Outcome::Skipped);
    }

    #[test]
    fn ephemeral_containers_are_read_as_a_pod_whatever_the_kind() {
        let mut debug = pod_request("UPDATE", "registry.my.com/app:v1");
        debug["request"]["subResource"] = json!("ephemeralcontainers");
        debug["request"]["kind"]["kind"] = json!("EphemeralContainers");
        debug["request"]["object"]["spec"]["ephemeralContainers"] =
            json!([{"name": "debugger", "image": "busybox:1.36"}]);
        let (outcome, out) = answer(&debug);
        assert_eq!(outcome.verdict(), Verdict::Deny);
        let message = out["response"]["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("Pod default/web: container \"debugger\" (spec.ephemeralContainers[0])"),
            "{message}"
        );
    }

    #[test]
    fn update_admits_images_the_old_object_had_with_a_warning() {
        let mut restart = pod_request("UPDATE", "nginx:1.25");
        restart["request"]["oldObject"] = pod("nginx:1.25");
        let (outcome, out) = answer(&restart);
        assert_eq!(outcome.verdict(), Verdict::Warn);
        assert_eq!(out["response"]["allowed"], true);
        let warnings = out["response"]["warnings"].as_array().unwrap();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert_eq!(
            warnings[0],
            "Pod default/web: container \"app\" (spec.containers[0]) image \"nginx:1.25\" resolves to docker.io/library/nginx:1.25, which policy \"corporate\" does not trust (trusted: registry.my.com, ghcr.io/my-org); admitted because the object already had this image before this update (policy \"corporate\" has existingImages: Allow)"
        );
        assert_eq!(warnings[1], "Use registry.my.com");

        // A new image in the same UPDATE is denied.
        let mut changed = pod_request("UPDATE", "redis:7");
        changed["request"]["oldObject"] = pod("nginx:1.25");
        assert_eq!(answer(&changed).0.verdict(), Verdict::Deny);
        // A CREATE never looks at an oldObject.
        let mut create = pod_request("CREATE", "nginx:1.25");
        create["request"]["oldObject"] = pod("nginx:1.25");
        assert_eq!(answer(&create).0.verdict(), Verdict::Deny);
    }

    #[test]
    fn a_malformed_old_object_checks_every_image() {
        for old in [json!("nope"), json!({"spec": {"containers": "nope"}}), Value::Null, json!(7)] {
            let mut update = pod_request("UPDATE", "nginx:1.25");
            update["request"]["oldObject"] = old.clone();
            let (outcome, out) = answer(&update);
            assert_eq!(outcome.verdict(), Verdict::Deny, "{old}");
            assert_eq!(out["response"]["status"]["code"], 403, "{old}");
        }
    }

    #[test]
    fn ephemeral_containers_keep_old_debuggers_and_check_new_ones() {
        let mut old = pod("registry.my.com/app:v1");
        old["spec"]["ephemeralContainers"] = json!([{"name": "dbg1", "image": "busybox:1.36"}]);
        let mut debug = pod_request("UPDATE", "registry.my.com/app:v1");
        debug["request"]["subResource"] = json!("ephemeralcontainers");
        debug["request"]["object"]["spec"]["ephemeralContainers"] =
            json!([{"name": "dbg1", "image": "busybox:1.36"}, {"name": "dbg2", "image": "alpine:3"}]);
        debug["request"]["oldObject"] = old;
        let (outcome, out) = answer(&debug);
        assert_eq!(outcome.verdict(), Verdict::Deny);
        let message = out["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains("(spec.ephemeralContainers[1]) image \"alpine:3\""), "{message}");
        assert!(!message.contains("busybox"), "{message}");
        let existing: Vec<&str> =
            outcome.violations().iter().filter(|v| v.existing).map(|v| v.container.as_str()).collect();
        assert_eq!(existing, ["dbg1"]);
    }

    #[test]
    fn dry_run_is_decided_normally() {
        let mut dry = pod_request("CREATE", "nginx:1.25");
        dry["request"]["dryRun"] = json!(true);
        let body = serde_json::to_vec(&dry).unwrap();
        let request = AdmissionRequest::parse(&body).unwrap();
        assert!(request.dry_run);
        assert_eq!(request.review(&snapshot(), now()).outcome.verdict(), Verdict::Deny);
    }

    #[test]
    fn updates_of_objects_being_deleted_are_allowed_but_creates_are_not() {
        let mut finalizing = pod_request("UPDATE", "nginx:1.25");
        finalizing["request"]["object"]["metadata"]["deletionTimestamp"] = json!("2026-11-22T10:00:00Z");
        let (outcome, out) = answer(&finalizing);
        assert!(matches!(outcome, Outcome::Skipped));
        assert_eq!(out["response"]["allowed"], true);
        let mut create = pod_request("CREATE", "nginx:1.25");
        create["request"]["object"]["metadata"]["deletionTimestamp"] = json!("2026-11-22T10:00:00Z");
        assert_eq!(answer(&create).0.verdict(), Verdict::Deny);
    }

    #[test]
    fn unreadable_or_missing_objects_are_denied() {
        let mut bad = pod_request("CREATE", "x");
        bad["request"]["object"]["spec"]["containers"] = json!("nope");
        let (outcome, out) = answer(&bad);
        assert!(matches!(outcome, Outcome::Unreadable(_)));
        assert_eq!(out["response"]["allowed"], false);
        assert_eq!(out["response"]["status"]["code"], 400);
        let message = out["response"]["status"]["message"].as_str().unwrap();
        assert!(message.starts_with("Pod default/web: cannot read the object: invalid type"), "{message}");

        for object in [None, Some(Value::Null)] {
            let mut missing = pod_request("UPDATE", "x");
            match object {
                None => missing["request"].as_object_mut().unwrap().remove("object"),
                Some(v) => missing["request"].as_object_mut().unwrap().insert("object".into(), v),
            };
            let (outcome, out) = answer(&missing);
            assert!(matches!(outcome, Outcome::Unreadable(_)));
            assert_eq!(out["response"]["allowed"], false);
            assert!(out["response"]["status"]["message"].as_str().unwrap().contains("carries no object"));
        }
    }

    #[test]
    fn generate_name_and_object_namespace_fill_in_for_the_request() {
        let mut created = pod_request("CREATE", "nginx:1.25");
        created["request"]["name"] = json!("");
        created["request"]["namespace"] = json!("");
        created["request"]["object"]["metadata"] = json!({"generateName": "web-", "namespace": "team-a"});
        let (_, out) = answer(&created);
        let message = out["response"]["status"]["message"].as_str().unwrap();
        assert!(message.starts_with("Pod team-a/web-*: container"), "{message}");
    }

    #[test]
    fn malformed_reviews_are_errors_with_reasons() {
        let cases: [(&[u8], &str); 7] = [
            (b"not json", "body is not a valid AdmissionReview"),
            (br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#, "got apiVersion \"admission.k8s.io/v1beta1\""),
            (br#"{"apiVersion":"imagepolicy.k8s.io/v1alpha1","kind":"ImageReview"}"#, "kind \"ImageReview\""),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, "has no request"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"kind":{"kind":"Pod"},"operation":"CREATE"}}"#, "no uid"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","operation":"CREATE"}}"#, "no kind.kind"),
            (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"Pod"},"operation":"PATCH"}}"#, "\"PATCH\" is not CREATE"),
        ];
        for (body, expected) in cases {
            let err = AdmissionRequest::parse(body).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} does not contain {expected}");
        }
    }

    fn image_review(namespace: &str, images: &[&str]) -> Vec<u8> {
        let containers: Vec<Value> = images.iter().map(|i| json!({"image": i})).collect();
        serde_json::to_vec(&json!({"apiVersion": "imagepolicy.k8s.io/v1alpha1", "kind": "ImageReview",
            "spec": {"containers": containers, "namespace": namespace}}))
        .unwrap()
    }

    #[test]
    fn image_review_allows_denies_and_warns() {
        let body = image_review("default", &["registry.my.com/app:v1"]);
        let answer = ImageRequest::parse(&body).unwrap().review(&snapshot(), now());
        let out: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(
            out,
            json!({"apiVersion": "imagepolicy.k8s.io/v1alpha1", "kind": "ImageReview", "status": {"allowed": true}})
        );

        let body = image_review("default", &["registry.my.com/app", "nginx:1.25", ""]);
        let answer = ImageRequest::parse(&body).unwrap().review(&snapshot(), now());
        assert_eq!(answer.outcome.verdict(), Verdict::Deny);
        let out: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(out["status"]["allowed"], false);
        let reason = out["status"]["reason"].as_str().unwrap();
        let lines: Vec<&str> = reason.lines().collect();
        assert!(
            lines[0].starts_with(
                "image \"nginx:1.25\" resolves to docker.io/library/nginx:1.25, which policy \"corporate\""
            ),
            "{reason}"
        );
        assert!(lines[1].starts_with("image \"\" is not a valid image reference"), "{reason}");
        assert_eq!(lines.last(), Some(&"Use registry.my.com"));
        assert!(
            out["status"]["auditAnnotations"][WARNINGS_ANNOTATION].as_str().unwrap().contains("registry.my.com/app")
        );
    }

    #[test]
    fn image_review_type_is_checked() {
        let err = ImageRequest::parse(&serde_json::to_vec(&pod_request("CREATE", "x")).unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("expected apiVersion \"imagepolicy.k8s.io/v1alpha1\" kind \"ImageReview\""),
            "{err}"
        );
        let err =
            ImageRequest::parse(br#"{"apiVersion":"imagepolicy.k8s.io/v1alpha1","kind":"ImageReview"}"#).unwrap_err();
        assert!(matches!(err, ReviewError::MissingSpec));
    }
}
