//! Residency Sensor kernel programs. This file only declares them; each hook
//! family lives in its own module, the maps in `maps.rs`.
#![no_std]
#![no_main]

mod connect;
mod emit;
mod maps;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that reaches here; loop to satisfy `!`.
    loop {}
}

/// The kernel refuses GPL-only helpers (ring buffer, cgroup id) to non-GPL programs.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
