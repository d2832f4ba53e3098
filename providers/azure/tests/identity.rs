//! Real token exchanges through `azure_identity` against a local HTTPS
//! Entra ID token endpoint, then ARM calls with the token it issued: the
//! client-secret flow, the AKS workload-identity flow (the federated
//! token file as client assertion), and a refused secret giving Entra's
//! own message without the secret in it.

mod common;

use common::token::TokenServer;
use common::FakeArm;
use peerpod_provider_api::{ErrorKind, Provider};
use peerpod_provider_azure::{ArmTiming, AzureProvider, CredentialKind, RawCredentials};

const TENANT: &str = "00000000-0000-0000-0000-0000000000dd";
const CLIENT: &str = "00000000-0000-0000-0000-0000000000cc";
const SECRET: &str = "very-secret-client-secret-value";

fn provider(
    arm: &FakeArm,
    tokens: &TokenServer,
    creds: RawCredentials,
) -> (AzureProvider, CredentialKind) {
    let raw = arm.raw_config();
    let (cred, kind) = creds.build_with_http(Some(&tokens.client())).unwrap();
    (
        AzureProvider::new(raw.check().unwrap(), cred, ArmTiming::default()).unwrap(),
        kind,
    )
}

#[tokio::test]
async fn client_secret_flow_gets_the_token_arm_accepts() {
    let (arm, tokens) = (FakeArm::start().await, TokenServer::start().await);
    let (p, kind) = provider(
        &arm,
        &tokens,
        RawCredentials {
            client_id: Some(CLIENT.into()),
            tenant_id: Some(TENANT.into()),
            client_secret: Some(SECRET.into()),
            federated_token_file: None,
            authority_host: Some(tokens.url.clone()),
        },
    );
    assert_eq!(kind, CredentialKind::ClientSecret);
    p.verify().await.unwrap();
    let reqs = tokens.requests();
    assert_eq!(reqs.len(), 1, "one token, cached for the later calls");
    let (path, f) = &reqs[0];
    assert_eq!(path, &format!("/{TENANT}/oauth2/v2.0/token"));
    assert_eq!(f["grant_type"], "client_credentials");
    assert_eq!(f["client_id"], CLIENT);
    assert_eq!(f["client_secret"], SECRET);
    assert_eq!(f["scope"], format!("{}/.default", arm.url));
    // ARM saw only the issued token (the stand-in refuses anything else).
    assert!(arm.requests().len() >= 3);
}

#[tokio::test]
async fn workload_identity_sends_the_federated_token_as_client_assertion() {
    let (arm, tokens) = (FakeArm::start().await, TokenServer::start().await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    std::fs::write(&file, "eyJhbGciOiJSUzI1NiJ9.service-account.jwt").unwrap();
    let (p, kind) = provider(
        &arm,
        &tokens,
        RawCredentials {
            client_id: Some(CLIENT.into()),
            tenant_id: Some(TENANT.into()),
            client_secret: None,
            federated_token_file: Some(file.display().to_string()),
            authority_host: Some(tokens.url.clone()),
        },
    );
    assert_eq!(kind, CredentialKind::WorkloadIdentity);
    p.verify().await.unwrap();
    let reqs = tokens.requests();
    let (_, f) = &reqs[0];
    assert_eq!(
        f["client_assertion"],
        "eyJhbGciOiJSUzI1NiJ9.service-account.jwt"
    );
    assert_eq!(
        f["client_assertion_type"],
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    assert!(!f.contains_key("client_secret"));
}

#[tokio::test]
async fn a_refused_secret_is_a_permission_error_without_the_secret() {
    let (arm, tokens) = (FakeArm::start().await, TokenServer::start().await);
    tokens.state.lock().unwrap().refuse = true;
    let (p, _) = provider(
        &arm,
        &tokens,
        RawCredentials {
            client_id: Some(CLIENT.into()),
            tenant_id: Some(TENANT.into()),
            client_secret: Some(SECRET.into()),
            federated_token_file: None,
            authority_host: Some(tokens.url.clone()),
        },
    );
    let e = p.verify().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied);
    let shown = e.to_string();
    assert!(shown.contains("AADSTS7000215"), "{shown}");
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(arm.requests().is_empty(), "no ARM call without a token");
}
