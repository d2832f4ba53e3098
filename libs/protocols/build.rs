//! Generates rust-protobuf messages and async ttrpc services from protos/.
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
}
