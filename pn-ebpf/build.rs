// Rebuild when bpf-linker changes: cargo does not know the linker is an input.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
