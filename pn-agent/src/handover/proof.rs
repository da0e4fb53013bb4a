//! Both ends of a hand-over prove they hold the host's static key (the
//! file only root can read), bound to both sides' fresh nonces: a request
//! recorded on one connection proves nothing on the next, and a process
//! that merely reached the socket proves nothing at all. Keyed BLAKE2s, as
//! the tunnel's macs.

use blake2::{
    Blake2sMac256,
    digest::{KeyInit, Mac as _},
};
use zeroize::Zeroizing;

pub const NONCE_LEN: usize = 32;
pub const PROOF_LEN: usize = 32;

pub type Nonce = [u8; NONCE_LEN];
pub type Proof = [u8; PROOF_LEN];

/// The key of the proofs, derived from the host's static private key (so
/// the proofs reveal nothing about that key).
pub struct ProofKey(Zeroizing<[u8; 32]>);

fn mac(key: &[u8], parts: &[&[u8]]) -> Blake2sMac256 {
    let mut m = <Blake2sMac256 as KeyInit>::new_from_slice(key).expect("32-byte key");
    for p in parts {
        m.update(p);
    }
    m
}

impl ProofKey {
    pub fn new(host_private: &[u8; 32]) -> ProofKey {
        let out = mac(host_private, &[b"pn agent hand-over v1"]).finalize();
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(&out.into_bytes());
        ProofKey(k)
    }

    /// The predecessor's proof, answering the successor's `hello` nonce.
    pub fn predecessor(&self, hello: &Nonce, challenge: &Nonce) -> Proof {
        mac(&self.0[..], &[b"predecessor", hello, challenge])
            .finalize()
            .into_bytes()
            .into()
    }

    /// The successor's proof for the predecessor's `challenge`, and what it
    /// asks (`mode`).
    pub fn successor(&self, challenge: &Nonce, hello: &Nonce, mode: u8) -> Proof {
        mac(&self.0[..], &[b"successor", challenge, hello, &[mode]])
            .finalize()
            .into_bytes()
            .into()
    }

    /// Checks a proof in constant time.
    pub fn verify(expected: &Proof, given: &[u8]) -> bool {
        use subtle_eq::ct_eq;
        ct_eq(expected, given)
    }
}

mod subtle_eq {
    /// Equal length and bytes, without an early exit on the first
    /// difference.
    pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
        std::hint::black_box(diff) == 0
    }
}

/// A fresh random nonce from the kernel.
pub fn nonce() -> std::io::Result<Nonce> {
    let mut n = [0u8; NONCE_LEN];
    let mut filled = 0;
    while filled < n.len() {
        // SAFETY: writing into the rest of a live buffer.
        let r = unsafe { libc::getrandom(n[filled..].as_mut_ptr().cast(), n.len() - filled, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += r as usize;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_the_key_both_nonces_and_the_mode() {
        let k = ProofKey::new(&[7; 32]);
        let other = ProofKey::new(&[8; 32]);
        let (h1, c1, c2) = ([1; 32], [2; 32], [3; 32]);
        let p = k.successor(&c1, &h1, 0);
        assert!(ProofKey::verify(&k.successor(&c1, &h1, 0), &p));
        assert!(
            !ProofKey::verify(&k.successor(&c2, &h1, 0), &p),
            "replayed on another challenge"
        );
        assert!(
            !ProofKey::verify(&k.successor(&c1, &h1, 1), &p),
            "other mode"
        );
        assert!(
            !ProofKey::verify(&other.successor(&c1, &h1, 0), &p),
            "other key"
        );
        assert!(
            !ProofKey::verify(&k.predecessor(&h1, &c1), &p),
            "other role"
        );
        assert!(!ProofKey::verify(&p, &p[..31]));
        assert_ne!(nonce().unwrap(), nonce().unwrap());
    }
}
