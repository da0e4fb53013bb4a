//! An attacker of the agent's hand-over socket, for the tests: run as any
//! user, it tries to take a running agent's place without the right to.
//!
//! `pn-handover-probe SOCKET forge`: a well-formed request with proofs made
//! with a key that is not the host's. `pn-handover-probe SOCKET replay KEY`:
//! a proof made (with the real key) for one connection's challenge, sent on
//! the next connection. Prints `refused: …`, `unreachable: …` or `TAKEN`
//! (the attack worked); exits 0 unless it worked.

use std::{os::unix::net::UnixStream, process::ExitCode};

use pn_agent::handover::{
    Challenge, HandoverError, MODE_TAKE, hello_exchange, proof, take_exchange, wire,
};

/// The first exchange; a refusal sent before our hello was read (the
/// agent refuses a stranger at once) still shows as a refusal.
fn greet(s: &UnixStream, nonce: &proof::Nonce) -> Result<Challenge, HandoverError> {
    match hello_exchange(s, nonce) {
        Err(HandoverError::Io(..)) => match wire::recv(s) {
            Ok(f) if f.kind == wire::REFUSED => Err(HandoverError::Refused(
                String::from_utf8_lossy(&f.payload).into_owned(),
            )),
            _ => Err(HandoverError::Closed),
        },
        r => r,
    }
}

fn attempt(socket: &str, mode: &str, key: Option<&str>) -> Result<(), HandoverError> {
    let connect = || UnixStream::connect(socket).map_err(|e| HandoverError::Io("connecting", e));
    let hello = proof::nonce().map_err(|e| HandoverError::Io("nonce", e))?;
    match mode {
        "forge" => {
            let s = connect()?;
            let c = greet(&s, &hello)?;
            let wrong = proof::ProofKey::new(&[0x42; 32]);
            take_exchange(&s, MODE_TAKE, &wrong.successor(&c.nonce, &hello, MODE_TAKE))?;
        }
        "replay" => {
            let text = std::fs::read_to_string(key.expect("replay needs the key file"))
                .map_err(|e| HandoverError::Io("reading the key", e))?;
            let private = pn_tunnel::keyfile::decode_key(text.trim()).expect("a key");
            let real = proof::ProofKey::new(&private);
            // A proof for this connection's challenge, never sent here…
            let first = connect()?;
            let c1 = greet(&first, &hello)?;
            let recorded = real.successor(&c1.nonce, &hello, MODE_TAKE);
            drop(first);
            // …sent on the next one, with the same hello.
            let s = connect()?;
            greet(&s, &hello)?;
            take_exchange(&s, MODE_TAKE, &recorded)?;
        }
        other => panic!("unknown mode {other}"),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (socket, mode) = (&args[1], &args[2]);
    match attempt(socket, mode, args.get(3).map(String::as_str)) {
        Ok(()) => {
            println!("TAKEN");
            ExitCode::FAILURE
        }
        Err(HandoverError::Io(what, e)) => {
            println!("unreachable: {what}: {e}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("refused: {e}");
            ExitCode::SUCCESS
        }
    }
}
