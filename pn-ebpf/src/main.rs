//! pn's kernel programs. They stay thin on purpose: parse the headers, look up
//! the maps, let `pn_common::policy` decide, count, report. Everything that can
//! be decided without the kernel is decided (and tested) in `pn-common`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// `core`'s atomic types lack read-modify-write methods on the BPF target;
// the intrinsic lowers to the instruction (`lock xadd`) all the same. Only
// `share` uses it.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod conn;
#[cfg(target_arch = "bpf")]
mod conn6;
mod lb;
#[cfg(target_arch = "bpf")]
mod lb6;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod memo;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod report;
#[cfg(target_arch = "bpf")]
mod share;
#[cfg(target_arch = "bpf")]
mod tc;
#[cfg(target_arch = "bpf")]
mod tc6;
#[cfg(target_arch = "bpf")]
mod tunnel;
#[cfg(target_arch = "bpf")]
mod xdp;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible: the ring buffer and ktime helpers are GPL-only.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// Built for the host only so that workspace-wide commands do not fail; the
/// programs exist for `target_arch = "bpf"` alone.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
