//! The Helm chart (install/charts/peerpods), rendered by the real Helm
//! engine (PyPI helm-python-sdk) and every object validated against the
//! Kubernetes 1.30 and 1.33 schemas (PyPI kubernetes-validate, strict),
//! then held to what the code needs: the settings and RBAC rules the
//! binary prints, the paths and probes the daemon really serves, the Kata
//! and containerd fragments. No cluster runs here: what a cluster would
//! check at admission is checked by the schemas, what the kubelet would do
//! with the probes is done against the real daemon.

use peerpod_tests::bins::bin_path;
use peerpod_tests::bins::workspace_root;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PROVIDERS: [&str; 4] = ["aws", "azure", "gcp", "libvirt"];
const KUBE_VERSIONS: &str = "1.30,1.33";

fn chart() -> PathBuf {
    workspace_root().join("install/charts/peerpods")
}

fn provider_file(p: &str) -> PathBuf {
    chart().join("providers").join(format!("{p}.yaml"))
}

/// Runs the binary's `config-reference`.
fn config_reference(args: &[&str]) -> String {
    let out = Command::new(bin_path("cloud-api-adaptor"))
        .arg("config-reference")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "config-reference {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn reference() -> Value {
    serde_json::from_str(&config_reference(&["--format", "chart-json"])).unwrap()
}

struct Rendered {
    objects: Vec<Value>,
    notes: String,
}

impl Rendered {
    fn kinds(&self) -> BTreeSet<String> {
        self.objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap_or_default().to_string())
            .collect()
    }
    fn one(&self, kind: &str) -> &Value {
        let all: Vec<&Value> = self.objects.iter().filter(|o| o["kind"] == kind).collect();
        assert_eq!(all.len(), 1, "one {kind}, got {}", all.len());
        all[0]
    }
    fn find(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }
    fn adaptor_container(&self) -> &Value {
        &self.one("DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    }
}

/// Renders the chart with the given values files and overrides (and
/// validates every object against the Kubernetes schemas when `validate`).
/// Err: Helm's message (bad values, a failed template) or the schema errors.
fn render_with(files: &[PathBuf], set: Value, validate: bool) -> Result<Rendered, String> {
    render_chart(&chart(), files, set, validate)
}

fn render_chart(
    chart: &Path,
    files: &[PathBuf],
    set: Value,
    validate: bool,
) -> Result<Rendered, String> {
    let mut cmd = Command::new("python3");
    cmd.arg(workspace_root().join("tests/scripts/helm_chart.py"))
        .arg("render")
        .arg(chart);
    for f in files {
        cmd.arg("-f").arg(f);
    }
    cmd.arg("--set-json").arg(set.to_string());
    if validate {
        cmd.args(["--validate", KUBE_VERSIONS]);
    }
    let out = cmd.output().expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) => {}
        Some(3) => panic!("{stderr}"),
        _ => return Err(stderr),
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    Ok(Rendered {
        objects: v["objects"].as_array().unwrap().clone(),
        notes: v["notes"].as_str().unwrap_or_default().to_string(),
    })
}

/// Values that fill every required setting of `p` with a plausible value.
fn required_filled(p: &str) -> Value {
    let r = reference();
    let mut config = serde_json::Map::new();
    for k in r["providers"][p]["required"].as_array().unwrap() {
        config.insert(
            k.as_str().unwrap().into(),
            json!(format!("test-{}", k.as_str().unwrap().to_lowercase())),
        );
    }
    json!({ "config": config, "clusterId": "test-cluster" })
}

fn render(p: &str, extra: Value) -> Rendered {
    let mut set = required_filled(p);
    merge(&mut set, extra);
    render_with(&[provider_file(p)], set, true).unwrap_or_else(|e| panic!("render {p}: {e}"))
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn render_err(p: &str, extra: Value) -> String {
    let mut set = required_filled(p);
    merge(&mut set, extra);
    match render_with(&[provider_file(p)], set, false) {
        Ok(_) => panic!("values were accepted"),
        Err(e) => e,
    }
}

#[test]
fn provider_files_are_what_the_binary_generates() {
    for p in PROVIDERS {
        let want = config_reference(&["--format", "helm-values", "--provider", p]);
        let have = std::fs::read_to_string(provider_file(p)).unwrap();
        assert!(
            want == have,
            "install/charts/peerpods/providers/{p}.yaml differs from the binary's flags: run scripts/gen-install.sh"
        );
    }
    let want = config_reference(&["--format", "chart-json"]);
    let have = std::fs::read_to_string(chart().join("generated/reference.json")).unwrap();
    assert!(
        want == have,
        "install/charts/peerpods/generated/reference.json differs from the binary: run scripts/gen-install.sh"
    );
}

/// The names in a values file, read as text: `config` keys (commented or
/// not, and which are uncommented) and the credential keys.
fn names_in_values_file(text: &str) -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
    let (mut config, mut uncommented, mut secrets) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let env = |s: &str| -> Option<String> {
        let (name, _) = s.split_once(": ")?;
        (name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            && !name.is_empty())
        .then(|| name.to_string())
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("  # ") {
            config.extend(env(rest));
        } else if let Some(rest) = line.strip_prefix("  ") {
            if let Some(n) = env(rest) {
                uncommented.insert(n.clone());
                config.insert(n);
            }
        } else if let Some(rest) = line.strip_prefix("#     ") {
            secrets.extend(env(rest));
        }
    }
    (config, uncommented, secrets)
}

#[test]
fn values_files_list_exactly_the_adaptors_settings() {
    let r = reference();
    let settable = |list: &Value, secret: bool| -> BTreeSet<String> {
        list.as_array()
            .unwrap()
            .iter()
            .filter(|s| s["chart_managed"] == "" && s["secret"] == secret)
            .map(|s| s["env"].as_str().unwrap().to_string())
            .collect()
    };
    for p in PROVIDERS {
        let text = std::fs::read_to_string(provider_file(p)).unwrap();
        let (config, uncommented, secrets) = names_in_values_file(&text);
        let mut want = settable(&r["providers"][p]["settings"], false);
        want.extend(settable(&r["global"], false));
        assert_eq!(config, want, "{p}: settings in the file vs the binary's");
        let required: BTreeSet<String> = r["providers"][p]["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            uncommented, required,
            "{p}: only the required ones are uncommented"
        );
        let mut want_secrets = settable(&r["providers"][p]["settings"], true);
        want_secrets.extend(settable(&r["global"], true));
        assert_eq!(
            secrets, want_secrets,
            "{p}: credentials in the file vs the binary's"
        );
    }
}

#[test]
fn chart_renders_and_validates_for_every_provider() {
    for p in PROVIDERS {
        let r = render(p, json!({}));
        let kinds = r.kinds();
        for k in [
            "ConfigMap",
            "DaemonSet",
            "ServiceAccount",
            "RuntimeClass",
            "Job",
        ] {
            assert!(kinds.contains(k), "{p}: no {k} in {kinds:?}");
        }
        let cm = r.one("ConfigMap");
        assert_eq!(cm["metadata"]["name"], "peer-pods-cm");
        assert_eq!(cm["data"]["CLOUD_PROVIDER"], p);
        let image = r.adaptor_container()["image"].as_str().unwrap().to_string();
        assert_eq!(image.ends_with("-libvirt"), p == "libvirt", "{p}: {image}");
    }
}

#[test]
fn helm_lint_is_clean() {
    for p in ["aws", "libvirt"] {
        for kube in ["v1.30.0", "v1.33.0"] {
            let out = Command::new("python3")
                .arg(workspace_root().join("tests/scripts/helm_chart.py"))
                .arg("lint")
                .arg(chart())
                .arg("-f")
                .arg(provider_file(p))
                .arg("--set-json")
                .arg(required_filled(p).to_string())
                .args(["--kube-version", kube])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "helm lint {p} {kube}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// The volume of the pod spec mounted at `path`.
fn mount<'a>(r: &'a Rendered, path: &str) -> (&'a Value, &'a Value) {
    let spec = &r.one("DaemonSet")["spec"]["template"]["spec"];
    let m = r.adaptor_container()["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == path)
        .unwrap_or_else(|| panic!("nothing mounted at {path}"));
    let v = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == m["name"])
        .unwrap();
    (m, v)
}

#[test]
fn daemonset_has_what_the_daemon_needs_and_no_more() {
    use cloud_api_adaptor::config::{DEFAULT_PODS_DIR, DEFAULT_SOCKET, DEFAULT_STATE_DIR};
    let r = render("aws", json!({}));
    let ds = r.one("DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(
        spec["nodeSelector"],
        json!({"node.kubernetes.io/worker": ""})
    );
    assert_eq!(
        ds["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
    );
    let c = r.adaptor_container();
    assert_eq!(c["securityContext"]["privileged"], false);
    assert_eq!(
        c["securityContext"]["capabilities"],
        json!({"add": ["NET_ADMIN", "SYS_ADMIN"]})
    );
    assert_eq!(
        c["command"],
        json!(["/usr/local/bin/cloud-api-adaptor"]),
        "no subcommand: CLOUD_PROVIDER"
    );

    // The daemon's default paths, each under a host path.
    let run = Path::new(DEFAULT_SOCKET).parent().unwrap();
    assert!(Path::new(DEFAULT_PODS_DIR).starts_with(run));
    let (m, v) = mount(&r, run.to_str().unwrap());
    assert_eq!(v["hostPath"]["path"], run.to_str().unwrap());
    assert!(m.get("readOnly").is_none_or(|r| r == false));
    let (_, v) = mount(&r, DEFAULT_STATE_DIR);
    assert_eq!(v["hostPath"]["path"], DEFAULT_STATE_DIR);
    let (m, v) = mount(&r, "/run/netns");
    assert_eq!(v["hostPath"]["path"], "/run/netns");
    assert_eq!(m["mountPropagation"], "HostToContainer");
    assert!(
        !c["volumeMounts"].to_string().contains("/var/run/libvirt"),
        "libvirt's socket is mounted only for the libvirt provider"
    );
    let (_, v) = mount(&r, "/var/lib/kubelet/device-plugins");
    assert_eq!(v["hostPath"]["path"], "/var/lib/kubelet/device-plugins");
    let lv = render("libvirt", json!({}));
    let (_, v) = mount(&lv, "/var/run/libvirt");
    assert_eq!(v["hostPath"]["path"], "/var/run/libvirt");

    // The pod's identity from the downward API.
    let env: BTreeMap<String, Value> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect();
    assert_eq!(
        env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(
        env["POD_UID"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.uid"
    );
    assert_eq!(env["PEERPOD_PROBE_LISTEN"]["value"], "127.0.0.1:8000");
    assert_eq!(
        c["envFrom"],
        json!([{"configMapRef": {"name": "peer-pods-cm"}}])
    );
}

#[test]
fn env_names_are_the_adaptors() {
    let r = reference();
    let mut known: BTreeMap<String, Value> = BTreeMap::new();
    for s in r["global"].as_array().unwrap() {
        known.insert(s["env"].as_str().unwrap().into(), s.clone());
    }
    for p in PROVIDERS {
        let mut k = known.clone();
        for s in r["providers"][p]["settings"].as_array().unwrap() {
            k.insert(s["env"].as_str().unwrap().into(), s.clone());
        }
        let all_config: serde_json::Map<String, Value> = r["providers"][p]["settings"]
            .as_array()
            .unwrap()
            .iter()
            .chain(r["global"].as_array().unwrap())
            .filter(|s| s["chart_managed"] == "" && s["secret"] == false)
            .map(|s| (s["env"].as_str().unwrap().to_string(), json!("1")))
            .collect();
        // Every settable key at once is accepted and lands in peer-pods-cm.
        let out = render(p, json!({"config": all_config, "clusterId": "c1"}));
        let cm = out.one("ConfigMap");
        for key in cm["data"].as_object().unwrap().keys() {
            assert!(
                k.contains_key(key),
                "{p}: peer-pods-cm key {key} is no setting of the adaptor"
            );
        }
        for key in all_config.keys() {
            assert!(
                cm["data"].get(key).is_some(),
                "{p}: {key} did not reach peer-pods-cm"
            );
        }
        // The DaemonSet's own env: only the adaptor's (POD_UID: the pod's
        // identity for the operator's tooling, as existing installs set it).
        let c = out.adaptor_container();
        let names: BTreeSet<String> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect();
        for n in &names {
            assert!(
                n == "POD_UID" || k.contains_key(n),
                "{p}: env {n} is no setting of the adaptor"
            );
            if n != "POD_UID" {
                assert_ne!(
                    k[n]["chart_managed"], "",
                    "{p}: {n} is set by the chart, so it must say so"
                );
            }
        }
        for must in [
            "NODE_NAME",
            "PEERPOD_PROBE_LISTEN",
            "RUST_LOG",
            "PEERPOD_CLUSTER_ID",
        ] {
            assert!(
                names.contains(must),
                "{p}: the DaemonSet does not set {must}"
            );
        }
    }
}

#[test]
fn bad_values_fail_naming_what_is_wrong() {
    let r = reference();
    for p in ["aws", "azure", "gcp"] {
        for key in r["providers"][p]["required"].as_array().unwrap() {
            let key = key.as_str().unwrap();
            let e = render_err(p, json!({"config": {key: ""}}));
            assert!(
                e.contains(&format!("config.{key} is required")),
                "{p} without {key}: {e}"
            );
        }
    }
    let e = render_err("aws", json!({"imagee": {"tag": "x"}}));
    assert!(e.contains("'imagee' not allowed"), "{e}");
    let e = render_err("aws", json!({"probes": {"prot": 1}}));
    assert!(e.contains("'prot' not allowed"), "{e}");
    let e = render_err("aws", json!({"config": {"PODVM_AMI_IDD": "ami-1"}}));
    assert!(
        e.contains("config.PODVM_AMI_IDD is not a setting of the aws provider"),
        "{e}"
    );
    let e = render_err("aws", json!({"config": {"AZURE_REGION": "eastus"}}));
    assert!(
        e.contains("config.AZURE_REGION is not a setting of the aws provider"),
        "{e}"
    );
    let e = render_err("azure", json!({"config": {"AZURE_CLIENT_SECRET": "s"}}));
    assert!(e.contains("config.AZURE_CLIENT_SECRET is a secret"), "{e}");
    let e = render_err("aws", json!({"config": {"NODE_NAME": "n"}}));
    assert!(
        e.contains("config.NODE_NAME is set by the chart itself"),
        "{e}"
    );
    let e = render_err("aws", json!({"config": {"PEERPODS_LIMIT_PER_NODE": 5}}));
    assert!(e.contains("/config/PEERPODS_LIMIT_PER_NODE"), "{e}");
    let e = render_err("aws", json!({"provider": "openstack"}));
    assert!(e.contains("/provider"), "{e}");
    let e = render_with(&[], json!({"clusterId": "c"}), false)
        .err()
        .expect("no provider refused");
    assert!(e.contains("provider is required"), "{e}");
    let e = render_err("aws", json!({"clusterId": ""}));
    assert!(
        e.contains("clusterId is required while uninstall.deleteInstances is true"),
        "{e}"
    );
    let e = render_err(
        "aws",
        json!({"secrets": {"mode": "create", "values": {"AWS_SECRET_KEY": "x"}}}),
    );
    assert!(
        e.contains("secrets.values.AWS_SECRET_KEY is not a setting"),
        "{e}"
    );
}

#[test]
fn secrets_modes() {
    let none = render("aws", json!({}));
    assert!(none.find("Secret").is_empty());
    let created = render(
        "aws",
        json!({"secrets": {"mode": "create", "values": {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s3cret"}}}),
    );
    let s = created.one("Secret");
    assert_eq!(s["metadata"]["name"], "peer-pods-secret");
    assert_eq!(s["stringData"]["AWS_SECRET_ACCESS_KEY"], "s3cret");
    assert!(created.notes.contains("WARNING") && created.notes.contains("release's history"));
    assert!(!created.notes.contains("s3cret"));
    let envfrom = &created.adaptor_container()["envFrom"];
    assert_eq!(
        envfrom[1],
        json!({"secretRef": {"name": "peer-pods-secret"}})
    );
    let referenced = render(
        "aws",
        json!({"secrets": {"mode": "reference", "existingSecretName": "mine"}}),
    );
    assert!(referenced.find("Secret").is_empty());
    assert_eq!(
        referenced.adaptor_container()["envFrom"][1],
        json!({"secretRef": {"name": "mine"}})
    );
    assert!(!referenced.notes.contains("WARNING"));
    // An existing peer-pods-cm (e.g. the Go adaptor's) used as it is.
    let existing = render_with(
        &[],
        json!({"provider": "aws", "clusterId": "c", "configMap": {"create": false}}),
        true,
    )
    .unwrap();
    assert!(existing.find("ConfigMap").is_empty());
    assert_eq!(
        existing.adaptor_container()["envFrom"][0],
        json!({"configMapRef": {"name": "peer-pods-cm"}})
    );
}

/// The rendered ClusterRole / Role rules of a component, by name suffix.
fn rules_of(r: &Rendered, kind: &str, component: &str) -> Option<Value> {
    let roles: Vec<&Value> = r
        .find(kind)
        .into_iter()
        .filter(|o| {
            let n = o["metadata"]["name"].as_str().unwrap_or_default();
            n.ends_with(&format!(":{component}")) || n.ends_with(&format!("-{component}"))
        })
        .collect();
    assert!(roles.len() <= 1, "{kind} for {component}: {}", roles.len());
    roles.first().map(|o| o["rules"].clone())
}

/// A table of `peerpod_kube::rbac` in the chart's JSON form.
fn code_table(key: &str) -> Option<Value> {
    let (_, rules) = peerpod_kube::rbac::COMPONENTS
        .iter()
        .find(|(k, _)| *k == key)
        .unwrap_or_else(|| panic!("no RBAC table {key} in the code"));
    let rules: Vec<Value> = rules
        .iter()
        .map(|r| {
            let mut v = json!({
                "apiGroups": [r.group],
                "resources": [r.resource],
                "verbs": r.verbs,
            });
            if !r.names.is_empty() {
                v["resourceNames"] = json!(r.names);
            }
            v
        })
        .collect();
    (!rules.is_empty()).then_some(Value::Array(rules))
}

#[test]
fn rbac_is_exactly_what_the_code_calls() {
    // generated/reference.json holds the code's tables, each of them.
    let rbac = reference()["rbac"].clone();
    let keys: Vec<&str> = peerpod_kube::rbac::COMPONENTS
        .iter()
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(
        rbac.as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        {
            let mut k = keys.clone();
            k.sort();
            k
        }
    );
    for key in &keys {
        let in_file = match &rbac[*key] {
            Value::Array(a) if !a.is_empty() => Some(Value::Array(a.clone())),
            _ => None,
        };
        assert_eq!(
            in_file,
            code_table(key),
            "{key} in generated/reference.json"
        );
    }
    // The adaptor's ClusterRole, bound to its service account.
    let r = render("aws", json!({}));
    assert_eq!(
        rules_of(&r, "ClusterRole", "adaptor"),
        code_table("adaptor")
    );
    let b = r
        .find("ClusterRoleBinding")
        .into_iter()
        .find(|b| b["roleRef"]["name"].as_str().unwrap().ends_with(":adaptor"))
        .expect("the adaptor's ClusterRoleBinding");
    assert_eq!(b["subjects"][0]["name"], "cloud-api-adaptor");
    // The webhook and the controller, when enabled: a ClusterRole and a
    // Role in the release namespace each, exactly their tables.
    for component in ["webhook", "controller"] {
        let r = render("aws", json!({ component: {"enabled": true} }));
        assert_eq!(
            rules_of(&r, "ClusterRole", component),
            code_table(component),
            "{component}"
        );
        assert_eq!(
            rules_of(&r, "Role", component),
            code_table(&format!("{component}-namespace")),
            "{component}"
        );
    }
    // Never Secrets cluster-wide, never wildcards.
    let all = render(
        "aws",
        json!({"webhook": {"enabled": true}, "controller": {"enabled": true}}),
    );
    for role in all.find("ClusterRole") {
        let rules = role["rules"].to_string();
        assert!(
            !rules.contains("\"secrets\"") && !rules.contains("\"*\""),
            "{rules}"
        );
    }
}

/// The webhook's and controller's objects against the Kubernetes schemas.
#[test]
fn webhook_and_controller_objects_are_valid_kubernetes() {
    let mut set = required_filled("gcp");
    merge(
        &mut set,
        json!({"webhook": {"enabled": true}, "controller": {"enabled": true}}),
    );
    let out = render_chart(&chart(), &[provider_file("gcp")], set, true)
        .unwrap_or_else(|e| panic!("{e}"));
    let mwc = out.one("MutatingWebhookConfiguration");
    let wh = &mwc["webhooks"][0];
    assert_eq!(wh["failurePolicy"], "Fail");
    assert!(
        wh["clientConfig"].get("caBundle").is_none(),
        "the webhook owns the caBundle"
    );
    assert_eq!(wh["clientConfig"]["service"]["name"], "peerpods-webhook");
    assert_eq!(
        wh["namespaceSelector"]["matchExpressions"][0]["values"],
        json!(["kube-system", "peerpods-system"])
    );
    assert!(wh["matchConditions"][0]["expression"]
        .as_str()
        .unwrap()
        .contains("'kata-remote'"));
    let deployments = out.find("Deployment");
    assert_eq!(deployments.len(), 2);
    for d in deployments {
        assert_eq!(d["spec"]["replicas"], 2);
    }
    let ctrl = out
        .find("Deployment")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "peerpod-ctrl")
        .unwrap();
    let c = &ctrl["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["command"], json!(["/usr/local/bin/peerpod-ctrl", "gcp"]));
    assert_eq!(
        c["envFrom"][0],
        json!({"configMapRef": {"name": "peer-pods-cm"}})
    );
    let svc = out.one("Service");
    assert_eq!(svc["metadata"]["name"], "peerpods-webhook");
    assert_eq!(
        rules_of(&out, "Role", "webhook"),
        code_table("webhook-namespace")
    );
}

#[test]
fn workload_identity_and_runtime_class() {
    let r = render(
        "azure",
        json!({"workloadIdentity": {"awsRoleArn": "arn:aws:iam::1:role/pp", "azureClientId": "cid", "gcpServiceAccount": "pp@p.iam.gserviceaccount.com"}}),
    );
    let ann = &r.one("ServiceAccount")["metadata"]["annotations"];
    assert_eq!(ann["eks.amazonaws.com/role-arn"], "arn:aws:iam::1:role/pp");
    assert_eq!(ann["azure.workload.identity/client-id"], "cid");
    assert_eq!(
        ann["iam.gke.io/gcp-service-account"],
        "pp@p.iam.gserviceaccount.com"
    );
    let labels = &r.one("DaemonSet")["spec"]["template"]["metadata"]["labels"];
    assert_eq!(labels["azure.workload.identity/use"], "true");
    let plain = render("aws", json!({}));
    assert!(plain.one("ServiceAccount")["metadata"]
        .get("annotations")
        .is_none());

    let rc = plain.one("RuntimeClass");
    assert_eq!(rc["metadata"]["name"], "kata-remote");
    assert_eq!(rc["handler"], "kata-remote");
    assert_eq!(
        rc["overhead"]["podFixed"],
        json!({"cpu": "250m", "memory": "120Mi"})
    );
    assert_eq!(
        rc["scheduling"]["nodeSelector"],
        json!({"node.kubernetes.io/worker": ""})
    );
    let custom = render(
        "aws",
        json!({"nodeSelector": {"node.kubernetes.io/worker": null, "peerpods": "yes"}, "runtimeClass": {"create": false}}),
    );
    assert!(custom.find("RuntimeClass").is_empty());
    assert_eq!(
        custom.one("DaemonSet")["spec"]["template"]["spec"]["nodeSelector"],
        json!({"peerpods": "yes"})
    );
}

#[test]
fn uninstall_hook_runs_the_adaptor_to_delete_this_clusters_vms() {
    let r = render("gcp", json!({"clusterId": "prod-1"}));
    let job = r.one("Job");
    assert_eq!(job["metadata"]["annotations"]["helm.sh/hook"], "pre-delete");
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    let cmd: Vec<&str> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(cmd[0], "/usr/local/bin/cloud-api-adaptor");
    assert_eq!(c["envFrom"], r.adaptor_container()["envFrom"]);
    assert_eq!(c["image"], r.adaptor_container()["image"]);
    assert!(c["env"].to_string().contains("prod-1"));
    // The flag exists in the binary.
    let help = Command::new(bin_path("cloud-api-adaptor"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for a in &cmd[1..] {
        assert!(help.contains(a), "cloud-api-adaptor has no {a}");
    }
    let off = render("gcp", json!({"uninstall": {"deleteInstances": false}}));
    assert!(off.find("Job").is_empty());
    assert!(off.notes.contains("NOT deleted"));
}

/// A TOML file as JSON (Python's tomllib: the test suite needs Python
/// for Helm anyway).
fn toml(path: &Path) -> Value {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json,sys,tomllib; print(json.dumps(tomllib.load(open(sys.argv[1],'rb'))))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn kata_and_containerd_fragments_point_at_the_adaptor() {
    use cloud_api_adaptor::config::DEFAULT_SOCKET;
    let kata = workspace_root().join("install/kata");
    let go = toml(&kata.join("runtime-go/50-peerpods.toml"));
    assert_eq!(
        go["hypervisor"]["remote"]["remote_hypervisor_socket"],
        DEFAULT_SOCKET
    );
    assert_eq!(go["hypervisor"]["remote"]["remote_hypervisor_timeout"], 600);
    let rs = toml(&kata.join("runtime-rs/50-peerpods.toml"));
    assert_eq!(
        rs["hypervisor"]["remote"]["hypervisor_socket"],
        DEFAULT_SOCKET
    );
    assert_eq!(rs["hypervisor"]["remote"]["hypervisor_timeout"], 600);
    // The chart mounts the socket's directory from the host.
    let r = render("aws", json!({}));
    let run = Path::new(DEFAULT_SOCKET)
        .parent()
        .unwrap()
        .to_str()
        .unwrap();
    let (_, v) = mount(&r, run);
    assert_eq!(v["hostPath"]["path"], run);
    // The handler the RuntimeClass names, in both containerd config versions.
    let v2 = toml(&kata.join("containerd/kata-remote-config-v2.toml"));
    let v3 = toml(&kata.join("containerd/kata-remote-config-v3.toml"));
    let e2 = &v2["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["kata-remote"];
    let e3 =
        &v3["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["kata-remote"];
    assert_eq!(e2, e3, "the same entry in both versions");
    assert_eq!(e2["runtime_type"], "io.containerd.kata-remote.v2");
    assert_eq!(r.one("RuntimeClass")["handler"], "kata-remote");
    // Debian's containerd (1.6, config version 2) reads the v2 entry as meant.
    peerpod_tests::containerd::require_tool("containerd");
    let dump = Command::new("containerd")
        .arg("--config")
        .arg(kata.join("containerd/kata-remote-config-v2.toml"))
        .args(["config", "dump"])
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump = String::from_utf8_lossy(&dump.stdout);
    let section = dump
        .split("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata-remote]")
        .nth(1)
        .expect("containerd knows the kata-remote runtime");
    for want in [
        "runtime_type = \"io.containerd.kata-remote.v2\"",
        "runtime_path = \"/opt/kata/bin/containerd-shim-kata-v2\"",
        "privileged_without_host_devices = true",
        "pod_annotations = [\"io.katacontainers.*\"]",
        "ConfigPath = \"/opt/kata/share/defaults/kata-containers/runtimes/remote/configuration-remote.toml\"",
    ] {
        assert!(section.contains(want), "containerd config dump lacks {want}:\n{section}");
    }
}

/// The adaptor started with the environment the chart gives it; killed on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP GET as the kubelet's httpGet probe sends it: (status, body).
fn http_get(host: &str, port: u16, path: &str) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect((host, port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nConnection: close\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    raw.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {raw:?}")))
}

#[test]
fn probes_reach_the_endpoints_the_daemon_serves() {
    // A free port, given to the chart as probes.port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = render("aws", json!({"probes": {"port": port}}));
    let c = r.adaptor_container().clone();
    // Run the binary with the DaemonSet's plain env values, the provider
    // switched to local (no cloud here) and the host paths in a temp dir.
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin_path("cloud-api-adaptor"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for e in c["env"].as_array().unwrap() {
        if let Some(v) = e["value"].as_str() {
            cmd.env(e["name"].as_str().unwrap(), v);
        }
    }
    cmd.env("NODE_NAME", "probe-test")
        .env("CLOUD_PROVIDER", "local")
        .env("LOCAL_AGENT_BIN", bin_path("kata-agent-double"))
        .env("PEERPOD_SOCKET", dir.path().join("hypervisor.sock"))
        .env("PEERPOD_PODS_DIR", dir.path().join("pods"))
        .env("PEERPOD_STATE_DIR", dir.path().join("state"))
        .env("PEERPOD_ORPHAN_INTERVAL", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let _daemon = Daemon(cmd.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let get = &c[probe]["httpGet"];
        let host = get["host"]
            .as_str()
            .expect("probes name 127.0.0.1: the pod IP is the node's");
        assert_eq!(host, "127.0.0.1");
        assert_eq!(get["port"], port);
        let path = get["path"].as_str().unwrap();
        loop {
            match http_get(host, port, path) {
                Ok(200) => break,
                other => assert!(
                    Instant::now() < deadline,
                    "{probe} {host}:{port}{path}: {other:?}"
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // The endpoint is the daemon's, not anything that answers 200.
    assert_eq!(http_get("127.0.0.1", port, "/nope").unwrap(), 404);
    assert_eq!(c["startupProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
}
