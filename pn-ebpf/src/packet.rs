//! Reading a TC program's packet, shared by the policy (`tc`) and the
//! tracking (`conn`) so that neither reaches into the other.

use aya_ebpf::programs::TcContext;

/// Reads a `T` at `off`: straight from the packet when the headers are in
/// its linear part (the usual case), through the helper otherwise.
#[inline(always)]
pub fn load<T>(ctx: &TcContext, off: usize) -> Option<T> {
    let start = ctx.data();
    if start + off + size_of::<T>() <= ctx.data_end() {
        // SAFETY: bounds checked against data_end just above.
        Some(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
    } else {
        ctx.load::<T>(off).ok()
    }
}
