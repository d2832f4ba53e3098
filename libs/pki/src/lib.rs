//! Certificate parameters shared by the two CAs we run: the adaptor's node
//! CA (it signs each pod VM's server and the adaptor's client certificate)
//! and the webhook's CA (it signs the webhook's serving certificate). Both
//! are CAs that sign end-entity certificates only, and both backdate
//! `notBefore` an hour so a peer whose clock runs a little behind does not
//! refuse a certificate made a moment ago.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose,
};

/// A CA named `common_name` that may sign end-entity certificates only
/// (path length 0), for certificate and CRL signing.
pub fn ca_params(common_name: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(p)
}

/// Valid from an hour ago for `days` days.
pub fn set_validity(p: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(days);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_of_path_length_zero_valid_from_an_hour_ago() {
        let mut p = ca_params("test CA").unwrap();
        set_validity(&mut p, 10);
        assert_eq!(p.is_ca, IsCa::Ca(BasicConstraints::Constrained(0)));
        let now = time::OffsetDateTime::now_utc();
        assert!(p.not_before < now - time::Duration::minutes(59));
        assert!(p.not_after > now + time::Duration::days(9));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        assert!(cert.pem().contains("BEGIN CERTIFICATE"));
    }
}
