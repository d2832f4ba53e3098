//! Generates the prost messages and tonic services of the kubelet device
//! plugin API from proto/. protox compiles the .proto in Rust, so the build
//! needs no `protoc` on the machine.

fn main() {
    let proto = "proto/deviceplugin.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"]).expect("parsing proto/deviceplugin.proto failed");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
        .expect("generating the device plugin API failed");
}
