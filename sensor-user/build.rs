//! Compiles the kernel object and hands its path to `include_bytes_aligned!`.
//!
//! The object is rebuilt whenever sensor-ebpf or sensor-common change (cargo
//! re-runs this script on any change below the listed inputs), so a stale object
//! can never be embedded silently. A missing toolchain fails the build with the
//! list of what is missing and the command that installs it.
use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("sensor-user lives in the workspace root")
        .to_path_buf();
    for input in sensor_build::inputs(&root) {
        println!("cargo:rerun-if-changed={}", input.display());
    }
    println!("cargo:rerun-if-env-changed=PATH");
    let target_dir = root.join("target").join("bpf");
    let object = match sensor_build::build(&root, &target_dir) {
        Ok(o) => o,
        Err(e) => {
            // cargo shows build-script stderr on failure; make it the whole story.
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("sensor-ebpf.o");
    std::fs::copy(&object, &out).unwrap_or_else(|e| {
        eprintln!(
            "error: copying {} to {}: {e}",
            object.display(),
            out.display()
        );
        std::process::exit(1);
    });
}
