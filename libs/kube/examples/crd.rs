//! Prints the PeerPod CRD (YAML) that is committed under install/.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    print!("{}", peerpod_kube::peerpod::crd_yaml()?);
    Ok(())
}
