fn main() {
    println!("{}", pn_agent::EBPF_OBJECT.len());
}
