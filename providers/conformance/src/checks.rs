//! The checks of the kit, one pub fn each (see the table in the crate
//! doc). Each uses node, cluster and sandbox names unique to the run, so
//! stand-ins shared between tests and instances left by other runs cannot
//! disturb it, and removes what it created whatever the outcome.

use crate::{owner, Fixture, Outcome};
use peerpod_provider_api::{ErrorKind, Instance, OwnerTags, Provider, ProviderError};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Check = Result<Outcome, String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Runs the check called `name`, then removes what it left and disarms
/// the fixture.
pub async fn run(name: &str, f: &dyn Fixture) -> Outcome {
    let node = unique("node");
    let r = match name {
        "create_list_delete" => create_list_delete(f, &node).await,
        "delete_idempotent" => delete_idempotent(f, &node).await,
        "delete_empty_id_refused" => delete_empty_id_refused(f, &node).await,
        "owner_isolation" => owner_isolation(f, &node).await,
        "failed_create_cleanup" => failed_create_cleanup(f, &node).await,
        "error_kinds" => error_kinds(f, &node).await,
        "concurrent_creates" => concurrent_creates(f, &node).await,
        "cancelled_create_findable" => cancelled_create_findable(f, &node).await,
        "deadline" => deadline(f, &node).await,
        other => Err(format!("no check named {other:?}")),
    };
    f.clear().await;
    remove_all(f, &node).await;
    match r {
        Ok(o) => o,
        Err(why) => Outcome::Failed(why),
    }
}

/// A lowercase name unique to this run (fits GCE labels and names).
fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

fn instance_name() -> String {
    format!("podvm-conf-{:08x}", rand::random::<u32>())
}

/// Every instance of `node` (any cluster), best effort deleted.
async fn remove_all(f: &dyn Fixture, node: &str) {
    let p = f.provider();
    if let Ok(v) = p.list_instances(&owner("", node, "")).await {
        for i in v {
            if let Err(e) = p.delete_instance(&i.id).await {
                tracing::warn!(instance = %i.id, error = %e, "conformance cleanup: delete failed");
            }
        }
    }
}

async fn list(p: &dyn Provider, o: &OwnerTags) -> Result<Vec<Instance>, String> {
    p.list_instances(o)
        .await
        .map_err(|e| format!("list {o:?}: {e}"))
}

async fn ids(p: &dyn Provider, o: &OwnerTags) -> Result<BTreeSet<String>, String> {
    Ok(list(p, o).await?.into_iter().map(|i| i.id).collect())
}

/// Nothing listed for `node` and nothing held in the backend.
async fn nothing_left(f: &dyn Fixture, node: &str, when: &str) -> Result<(), String> {
    let listed = ids(&*f.provider(), &owner("", node, "")).await?;
    ensure!(listed.is_empty(), "{when}: still listed: {listed:?}");
    let held = f.leftovers(node).await;
    ensure!(held.is_empty(), "{when}: the backend still holds {held:?}");
    Ok(())
}

async fn create(f: &dyn Fixture, o: OwnerTags) -> Result<Instance, String> {
    let req = f.request(&instance_name(), o);
    f.provider()
        .create_instance(req)
        .await
        .map_err(|e| format!("create: {e}"))
}

pub async fn create_list_delete(f: &dyn Fixture, node: &str) -> Check {
    let p = f.provider();
    let o = owner(&unique("cl"), node, &unique("sb"));
    let req = f.request(&instance_name(), o.clone());
    let inst = p
        .create_instance(req.clone())
        .await
        .map_err(|e| format!("create: {e}"))?;
    ensure!(
        !inst.id.trim().is_empty(),
        "created instance has no id: {inst:?}"
    );
    ensure!(
        inst.name == req.name,
        "name {:?}, asked for {:?}",
        inst.name,
        req.name
    );
    ensure!(
        !inst.ips.is_empty(),
        "created instance has no address: {inst:?}"
    );
    for (k, v) in req.all_tags() {
        ensure!(
            inst.tags.get(&k) == Some(&v),
            "tag {k}={v} missing on the created instance: {:?}",
            inst.tags
        );
    }
    let listed = list(&*p, &o).await?;
    ensure!(
        listed.len() == 1 && listed[0].id == inst.id,
        "list by its owner tags: {listed:?}, want only {}",
        inst.id
    );
    ensure!(
        listed[0].name == inst.name && !listed[0].ips.is_empty(),
        "listed {:?} differs from created {inst:?}",
        listed[0]
    );
    for (k, v) in req.all_tags() {
        ensure!(
            listed[0].tags.get(&k) == Some(&v),
            "tag {k}={v} missing when listed: {:?}",
            listed[0].tags
        );
    }
    let by_node = ids(&*p, &owner("", node, "")).await?;
    ensure!(
        by_node.contains(&inst.id),
        "list by node alone misses {}: {by_node:?}",
        inst.id
    );
    p.delete_instance(&inst.id)
        .await
        .map_err(|e| format!("delete {}: {e}", inst.id))?;
    nothing_left(f, node, "after delete").await?;
    Ok(Outcome::Passed)
}

pub async fn delete_idempotent(f: &dyn Fixture, node: &str) -> Check {
    let p = f.provider();
    let inst = create(f, owner("", node, &unique("sb"))).await?;
    p.delete_instance(&inst.id)
        .await
        .map_err(|e| format!("first delete: {e}"))?;
    p.delete_instance(&inst.id)
        .await
        .map_err(|e| format!("second delete of {} (must succeed): {e}", inst.id))?;
    let unknown = f.unknown_instance_id();
    p.delete_instance(&unknown)
        .await
        .map_err(|e| format!("delete of unknown id {unknown} (must succeed): {e}"))?;
    nothing_left(f, node, "after deletes").await?;
    Ok(Outcome::Passed)
}

pub async fn delete_empty_id_refused(f: &dyn Fixture, node: &str) -> Check {
    let p = f.provider();
    let inst = create(f, owner("", node, &unique("sb"))).await?;
    for bad in ["", "  "] {
        match p.delete_instance(bad).await {
            Ok(()) => return Err(format!("delete({bad:?}) succeeded: must be refused")),
            Err(e) => ensure!(
                e.kind == ErrorKind::InvalidRequest,
                "delete({bad:?}): kind {:?}, want InvalidRequest: {e}",
                e.kind
            ),
        }
    }
    let still = ids(&*p, &owner("", node, "")).await?;
    ensure!(
        still.contains(&inst.id),
        "an empty-id delete removed {}",
        inst.id
    );
    Ok(Outcome::Passed)
}

pub async fn owner_isolation(f: &dyn Fixture, node: &str) -> Check {
    let p = f.provider();
    let (ca, cb) = (unique("ca"), unique("cb"));
    let node2 = format!("{node}-2");
    let (s1, s2, s3) = (unique("sb"), unique("sb"), unique("sb"));
    let a1 = create(f, owner(&ca, node, &s1)).await?;
    let a2 = create(f, owner(&ca, &node2, &s2)).await;
    let b1 = create(f, owner(&cb, node, &s3)).await;
    let r = async {
        let (a2, b1) = (a2?, b1?);
        let want = |v: &[&Instance]| v.iter().map(|i| i.id.clone()).collect::<BTreeSet<_>>();
        let cases: Vec<(OwnerTags, BTreeSet<String>, &str)> = vec![
            (owner(&ca, node, ""), want(&[&a1]), "cluster A, node 1"),
            (owner(&ca, &node2, ""), want(&[&a2]), "cluster A, node 2"),
            (
                owner(&cb, node, ""),
                want(&[&b1]),
                "cluster B, node 1 (same node name as A's)",
            ),
            (
                owner("", node, ""),
                want(&[&a1, &b1]),
                "any cluster, node 1",
            ),
            (
                owner(&ca, node, &s1),
                want(&[&a1]),
                "cluster A, node 1, its sandbox",
            ),
            (
                owner(&ca, node, &s3),
                want(&[]),
                "cluster A, node 1, cluster B's sandbox",
            ),
        ];
        for (o, want, what) in cases {
            let got = ids(&*p, &o).await?;
            ensure!(got == want, "{what}: listed {got:?}, want {want:?}");
        }
        Ok(())
    }
    .await;
    remove_all(f, &node2).await;
    r?;
    Ok(Outcome::Passed)
}

pub async fn failed_create_cleanup(f: &dyn Fixture, node: &str) -> Check {
    let kind = match f.fail_next_create().await {
        Ok(k) => k,
        Err(why) => return Ok(Outcome::NotApplicable(why)),
    };
    match f
        .provider()
        .create_instance(f.request(&instance_name(), owner("", node, &unique("sb"))))
        .await
    {
        Ok(i) => return Err(format!("the create the stand-in broke succeeded: {i:?}")),
        Err(e) => ensure!(e.kind == kind, "kind {:?}, want {kind:?}: {e}", e.kind),
    }
    nothing_left(f, node, "after the failed create").await?;
    Ok(Outcome::Passed)
}

pub async fn error_kinds(f: &dyn Fixture, node: &str) -> Check {
    let inj = f.injections();
    if inj.is_empty() {
        return Ok(Outcome::NotApplicable(
            "the stand-in cannot inject cloud errors".into(),
        ));
    }
    for i in inj {
        f.inject(&i)
            .await
            .map_err(|e| format!("inject {}: {e}", i.what))?;
        let r = f
            .provider()
            .create_instance(f.request(&instance_name(), owner("", node, &unique("sb"))))
            .await;
        f.clear().await;
        let e: ProviderError = match r {
            Ok(inst) => return Err(format!("{}: create succeeded: {inst:?}", i.what)),
            Err(e) => e,
        };
        ensure!(
            e.kind == i.kind,
            "{}: kind {:?}, want {:?}: {e}",
            i.what,
            e.kind,
            i.kind
        );
        if let Some(code) = &i.code {
            ensure!(
                e.code.as_ref() == Some(code),
                "{}: code {:?}, want {code}: {e}",
                i.what,
                e.code
            );
        }
        ensure!(
            e.message.contains(&i.message_part),
            "{}: the cloud's message {:?} is not in {e}",
            i.what,
            i.message_part
        );
        ensure!(
            e.retryable() == i.kind.retryable(),
            "{}: retryable mismatch",
            i.what
        );
        nothing_left(f, node, &format!("after {}", i.what)).await?;
    }
    Ok(Outcome::Passed)
}

pub async fn concurrent_creates(f: &dyn Fixture, node: &str) -> Check {
    let p = f.provider();
    let n = f.concurrency();
    let reqs: Vec<_> = (0..n)
        .map(|_| f.request(&instance_name(), owner("", node, &unique("sb"))))
        .collect();
    let results = futures::future::join_all(reqs.into_iter().map(|r| {
        let p = Arc::clone(&p);
        async move { p.create_instance(r).await }
    }))
    .await;
    let mut made = BTreeSet::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(i) => {
                ensure!(made.insert(i.id.clone()), "id {} given twice", i.id);
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    ensure!(
        errors.is_empty(),
        "{} of {n} concurrent creates failed: {errors:?}",
        errors.len()
    );
    let listed = ids(&*p, &owner("", node, "")).await?;
    ensure!(
        listed == made,
        "listed {} instances, created {n}: {listed:?} vs {made:?}",
        listed.len()
    );
    let dels = futures::future::join_all(made.iter().map(|id| {
        let p = Arc::clone(&p);
        async move {
            p.delete_instance(id)
                .await
                .map_err(|e| format!("{id}: {e}"))
        }
    }))
    .await;
    let failed: Vec<String> = dels.into_iter().filter_map(Result::err).collect();
    ensure!(failed.is_empty(), "concurrent deletes failed: {failed:?}");
    nothing_left(f, node, "after the concurrent deletes").await?;
    Ok(Outcome::Passed)
}

pub async fn cancelled_create_findable(f: &dyn Fixture, node: &str) -> Check {
    let p = f.provider();
    for ms in [0u64, 5, 30, 150, 600] {
        let req = f.request(&instance_name(), owner("", node, &unique("sb")));
        let _ = tokio::time::timeout(Duration::from_millis(ms), p.create_instance(req)).await;
    }
    tokio::time::sleep(f.settle()).await;
    for i in list(&*p, &owner("", node, "")).await? {
        p.delete_instance(&i.id)
            .await
            .map_err(|e| format!("delete of {} found after a cancelled create: {e}", i.id))?;
    }
    nothing_left(f, node, "after deleting what the cancelled creates left").await?;
    Ok(Outcome::Passed)
}

pub async fn deadline(f: &dyn Fixture, node: &str) -> Check {
    let limit = match f.stall(true).await {
        Ok(d) => d,
        Err(why) => return Ok(Outcome::NotApplicable(why)),
    };
    let r = deadline_stalled(f, node, limit).await;
    let back = f.stall(false).await;
    r?;
    back.map_err(|e| format!("un-stall: {e}"))?;
    list(&*f.provider(), &owner("", node, ""))
        .await
        .map_err(|e| format!("after the backend answers again: {e}"))?;
    Ok(Outcome::Passed)
}

async fn deadline_stalled(f: &dyn Fixture, node: &str, limit: Duration) -> Result<(), String> {
    let p = f.provider();
    // Generous: this checks that the call ends, not how fast.
    let cap = limit * 3 + Duration::from_secs(5);
    let t = Instant::now();
    let r = tokio::time::timeout(cap, p.list_instances(&owner("", node, ""))).await;
    match r {
        Err(_) => {
            return Err(format!(
                "list did not return within {cap:?} (deadline {limit:?})"
            ))
        }
        Ok(Ok(v)) => return Err(format!("list answered {v:?} while the backend was stalled")),
        Ok(Err(e)) => ensure!(e.retryable(), "list's deadline error is not retryable: {e}"),
    }
    let listed_in = t.elapsed();
    let t = Instant::now();
    let req = f.request(&instance_name(), owner("", node, &unique("sb")));
    match tokio::time::timeout(cap, p.create_instance(req)).await {
        Err(_) => {
            return Err(format!(
                "create did not return within {cap:?} (deadline {limit:?})"
            ))
        }
        Ok(Ok(i)) => {
            return Err(format!(
                "create answered {i:?} while the backend was stalled"
            ))
        }
        Ok(Err(e)) => ensure!(
            e.retryable(),
            "create's deadline error is not retryable: {e}"
        ),
    }
    tracing::info!(?limit, ?listed_in, created_in = ?t.elapsed(), "deadline honoured");
    Ok(())
}
