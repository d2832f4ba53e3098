//! The provider conformance kit: one async test suite every provider runs,
//! in process or as a plugin, so "a provider" means the same thing for
//! every cloud. A provider's test implements [`Fixture`] (the provider
//! plus what its local stand-in can do: fail a create half-way, inject a
//! cloud error, stop answering, list what the backend still holds) and
//! calls [`run_all`]; the [`Report`] says which checks passed, which
//! failed and why, and which do not apply to this stand-in (and why).
//! [`Report::assert_passed`] then fails the test on any failure, and also
//! when the set of checks that do not apply differs from the one the test
//! declares, so losing a capability is noticed too.
//!
//! The checks (each also a pub fn in [`checks`]):
//!
//! | check | what must hold |
//! |---|---|
//! | `create_list_delete` | a created instance has an id, the requested name, an address, the owner and extra tags; list by owner finds exactly it; after delete it is not listed and the backend holds nothing for it |
//! | `delete_idempotent` | deleting twice, and deleting an id that never existed, succeed |
//! | `delete_empty_id_refused` | `""` and `"  "` are refused with `InvalidRequest`, nothing deleted |
//! | `owner_isolation` | list filters by node and by cluster: two nodes of one cluster and one node name in two clusters see only their own instances; an empty cluster in the filter matches all clusters |
//! | `failed_create_cleanup` | a create that fails after making something returns the error and leaves nothing listed or held |
//! | `error_kinds` | cloud errors reach the caller with the right [`ErrorKind`], the cloud's code and message, and leave nothing |
//! | `concurrent_creates` | N (20) creates at once all succeed with distinct ids; list finds N; N deletes at once leave nothing |
//! | `cancelled_create_findable` | a create abandoned by its caller (deadline) at several points leaves nothing that list by owner does not find; deleting what it finds leaves nothing |
//! | `deadline` | when the backend stops answering, calls fail within the provider's deadline with a retryable error, and work again when it answers |

pub mod checks;
pub mod memory;

use async_trait::async_trait;
use peerpod_provider_api::{ErrorKind, InstanceRequest, OwnerTags, Provider};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Every check, in the order [`run_all`] runs them.
pub const CHECKS: [&str; 9] = [
    "create_list_delete",
    "delete_idempotent",
    "delete_empty_id_refused",
    "owner_isolation",
    "failed_create_cleanup",
    "error_kinds",
    "concurrent_creates",
    "cancelled_create_findable",
    "deadline",
];

/// A cloud error the stand-in can make the next create fail with.
#[derive(Debug, Clone)]
pub struct Injection {
    /// What the stand-in does, for the report (e.g. `EC2 InsufficientInstanceCapacity`).
    pub what: String,
    /// The kind the provider must report.
    pub kind: ErrorKind,
    /// The cloud code the error must carry, if the provider keeps one.
    pub code: Option<String>,
    /// A piece of the cloud's message the error must contain.
    pub message_part: String,
}

/// A provider under test and its stand-in's abilities. Every method but
/// [`Fixture::provider`] and [`Fixture::unknown_instance_id`] has a
/// default meaning "the stand-in cannot": the matching check then
/// reports "not applicable" with the reason given.
#[async_trait]
pub trait Fixture: Send + Sync {
    fn provider(&self) -> Arc<dyn Provider>;

    /// An instance id in this provider's format that names nothing.
    fn unknown_instance_id(&self) -> String;

    /// A request the provider can fulfil (default: [`basic_request`]);
    /// override to add an image, valid user data…
    fn request(&self, name: &str, owner: OwnerTags) -> InstanceRequest {
        basic_request(name, owner)
    }

    /// Creates the concurrency check makes at once.
    fn concurrency(&self) -> usize {
        20
    }

    /// How long a provider may take, after its caller gave up, to stop
    /// touching the backend (a plugin's server sees the cancel late).
    fn settle(&self) -> Duration {
        Duration::from_millis(500)
    }

    /// Arranges that the next create fails after it made something in the
    /// backend; returns the kind that create must report.
    async fn fail_next_create(&self) -> Result<ErrorKind, String> {
        Err("the stand-in cannot fail a create half-way".into())
    }

    /// The cloud errors the stand-in can inject (see [`Fixture::inject`]).
    fn injections(&self) -> Vec<Injection> {
        Vec::new()
    }

    /// Makes the next create fail as `i` says.
    async fn inject(&self, _i: &Injection) -> Result<(), String> {
        Err("the stand-in cannot inject errors".into())
    }

    /// Undoes any injection or failure still armed.
    async fn clear(&self) {}

    /// What the backend still holds for `node` beyond what list shows
    /// (disks, NICs, namespaces, processes…), found through the stand-in;
    /// must be empty after every delete and failed create.
    async fn leftovers(&self, _node: &str) -> Vec<String> {
        Vec::new()
    }

    /// Makes the backend stop answering (`true`) or answer again
    /// (`false`); returns the deadline the provider is configured with.
    async fn stall(&self, _on: bool) -> Result<Duration, String> {
        Err("the stand-in cannot stop answering".into())
    }
}

/// Owner tags; the kit's node and cluster names are unique per run.
pub fn owner(cluster: &str, node: &str, sandbox: &str) -> OwnerTags {
    OwnerTags {
        cluster: cluster.into(),
        node: node.into(),
        sandbox_id: sandbox.into(),
    }
}

/// A request with no sizing, a conformance extra tag and a tiny
/// cloud-config as user data.
pub fn basic_request(name: &str, owner: OwnerTags) -> InstanceRequest {
    InstanceRequest {
        extra_tags: BTreeMap::from([("peerpod-conformance".to_string(), "1".to_string())]),
        ..InstanceRequest::new(name, owner, b"#cloud-config\n".to_vec())
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    NotApplicable(String),
    Failed(String),
}

/// What [`run_all`] found.
#[derive(Debug, Default)]
pub struct Report {
    pub results: Vec<(&'static str, Outcome)>,
}

impl Report {
    pub fn outcome(&self, check: &str) -> Option<&Outcome> {
        self.results
            .iter()
            .find(|(c, _)| *c == check)
            .map(|(_, o)| o)
    }

    /// Panics (with the whole report) unless every check passed except
    /// exactly those in `not_applicable`, which must be not applicable.
    pub fn assert_passed(&self, not_applicable: &[&str]) {
        self.assert_passed_except(not_applicable, &[]);
    }

    /// As [`Report::assert_passed`], with `known_failures`: checks this
    /// provider is known to fail (a bug filed against it), which must
    /// fail — so the day one is fixed the test says to remove it.
    pub fn assert_passed_except(&self, not_applicable: &[&str], known_failures: &[&str]) {
        let mut bad = Vec::new();
        for (c, o) in &self.results {
            let expect_na = not_applicable.contains(c);
            let known = known_failures.contains(c);
            match o {
                Outcome::Passed if expect_na => bad.push(format!(
                    "{c} passed but the test declares it not applicable: update the test"
                )),
                Outcome::Passed if known => bad.push(format!(
                    "{c} passes now: remove it from the test's known failures"
                )),
                Outcome::NotApplicable(why) if !expect_na => bad.push(format!(
                    "{c} did not run ({why}) but the test expects it to"
                )),
                Outcome::Failed(why) if !known => bad.push(format!("{c} FAILED: {why}")),
                _ => {}
            }
        }
        assert!(
            bad.is_empty(),
            "conformance:\n{}\n\nreport:\n{self}",
            bad.join("\n")
        );
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (c, o) in &self.results {
            match o {
                Outcome::Passed => writeln!(f, "  pass  {c}")?,
                Outcome::NotApplicable(why) => writeln!(f, "  n/a   {c}: {why}")?,
                Outcome::Failed(why) => writeln!(f, "  FAIL  {c}: {why}")?,
            }
        }
        Ok(())
    }
}

/// Runs every check against the fixture, one after the other.
pub async fn run_all(f: &dyn Fixture) -> Report {
    let mut r = Report::default();
    for name in CHECKS {
        let o = checks::run(name, f).await;
        tracing::info!(check = name, outcome = ?o, "conformance");
        r.results.push((name, o));
    }
    r
}
