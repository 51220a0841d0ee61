//! Generates the gRPC code. `protoc` comes from the protoc-bin-vendored crate,
//! so no system package is needed.
fn main() {
    let protoc = protoc_bin_vendored::protoc_bin_path()
        .expect("protoc-bin-vendored ships protoc for this platform");
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=residency");
    tonic_prost_build::configure()
        // JSON output for scripts (`sensorctl --json`).
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .file_descriptor_set_path(
            std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
                .join("residency_descriptor.bin"),
        )
        .compile_protos(
            &[
                "residency/agent/v1/agent.proto",
                "residency/collector/v1/collector.proto",
            ],
            &["."],
        )
        .expect("compiling the protos");
}
