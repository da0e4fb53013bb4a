#![no_std]
// Exists so pn-agent can declare a build dependency on this crate (cargo then
// rebuilds the agent when the programs change); the programs are the binary.
