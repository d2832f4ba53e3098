//! Generates rust-protobuf messages and async ttrpc services from protos/,
//! and (feature `provider-grpc`) the prost messages and tonic client and
//! server of the provider plugin protocol.
use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let protos = [
        "protos/hypervisor.proto",
        "protos/health.proto",
        "protos/oci.proto",
        "protos/agent.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .inputs(protos)
        .include("protos")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generating ttrpc code from protos/ failed");

    // The generated files start with inner attributes (`#![allow(..)]`),
    // which `include!` cannot take; lib.rs applies those allowances on the
    // enclosing modules instead.
    for entry in std::fs::read_dir(&out).expect("OUT_DIR is readable") {
        let path = entry.expect("OUT_DIR entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("generated file is UTF-8");
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| {
                    let t = l.trim_start();
                    !t.starts_with("#![") && !t.starts_with("//!")
                })
                .collect();
            std::fs::write(&path, kept.join("\n")).expect("rewrite generated file");
        }
    }
    #[cfg(feature = "provider-grpc")]
    provider_grpc(&out);
}

/// tonic-prost-build on a descriptor set protox compiles in Rust (as the
/// device plugin's build does), so no protoc is needed. Written to
/// `OUT_DIR/grpc/`, apart from the ttrpc files rewritten above.
#[cfg(feature = "provider-grpc")]
fn provider_grpc(out: &std::path::Path) {
    let proto = "protos/provider.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["protos"]).expect("parsing protos/provider.proto failed");
    let dir = out.join("grpc");
    std::fs::create_dir_all(&dir).expect("create OUT_DIR/grpc");
    tonic_prost_build::configure()
        .out_dir(&dir)
        .btree_map(".")
        .compile_fds(fds)
        .expect("generating the provider plugin gRPC code from protos/provider.proto failed");
}
