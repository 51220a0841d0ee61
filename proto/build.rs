//! Generates the gRPC code. `protoc` comes from the protoc-bin-vendored crate,
//! so no system package is needed.
fn main() {
    let protoc = protoc_bin_vendored::protoc_bin_path()
        .expect("protoc-bin-vendored ships protoc for this platform");
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=residency");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let descriptors = out.join("residency_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptors)
        .compile_protos(
            &[
                "residency/agent/v1/agent.proto",
                "residency/collector/v1/collector.proto",
            ],
            &["."],
        )
        .expect("compiling the protos");
    // JSON for scripts, exports and `--json` (`sensorctl`, `collectorctl`,
    // `collectord export`): the canonical protobuf JSON mapping (enum names,
    // 64-bit integers as strings), with the .proto field names and every
    // field present, so one shape serves every command.
    let set = std::fs::read(&descriptors).expect("tonic-prost-build wrote the descriptor set");
    pbjson_build::Builder::new()
        .register_descriptors(&set)
        .expect("the descriptor set parses")
        .preserve_proto_field_names()
        .emit_fields()
        .ignore_unknown_fields()
        .build(&[".residency"])
        .expect("generating the JSON mapping");
}
