//! Owned secret bytes: zeroized on drop, never printed, compared in
//! constant time.

use std::fmt;

use zeroize::Zeroizing;

/// Key material (SKEYSEED, SK_*, KEYMAT, DH shared secrets, PSKs).
///
/// The bytes are wiped when the `Secret` is dropped (including spare `Vec`
/// capacity). `Debug` prints only the length. `==` is constant time in the
/// contents (the length is not treated as secret).
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Takes ownership of `bytes` without copying them.
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(Zeroizing::new(bytes))
    }

    /// Copies `bytes` into a new secret.
    pub fn from_slice(bytes: &[u8]) -> Self {
        Secret::new(bytes.to_vec())
    }

    /// The secret bytes. Keep the borrow short; do not copy them into
    /// buffers that are not wiped.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<redacted> {} bytes)", self.len())
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(self.as_bytes(), other.as_bytes())
    }
}

impl Eq for Secret {}

/// Compares two byte strings in time independent of their contents.
///
/// Slices of different lengths compare unequal immediately: lengths are
/// public (they are fixed by the negotiated algorithm).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && boring::memcmp::eq(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_bytes() {
        let s = Secret::from_slice(&[0xde, 0xad, 0xbe, 0xef, 0x42]);
        let dbg = format!("{s:?}");
        assert_eq!(dbg, "Secret(<redacted> 5 bytes)");
        for needle in ["de", "ad", "be", "ef", "42", "222", "173", "66"] {
            assert!(!dbg.contains(needle), "{dbg} contains {needle}");
        }
        let alt = format!("{s:#?}");
        assert!(!alt.contains("de"), "{alt}");
    }

    #[test]
    fn accessors() {
        let s = Secret::new(vec![1, 2, 3]);
        assert_eq!(s.as_bytes(), &[1, 2, 3]);
        assert_eq!(s.len(), 3);
        assert!(!s.is_empty());
        assert!(Secret::new(Vec::new()).is_empty());
        assert_eq!(s.clone(), s);
    }

    #[test]
    fn equality_is_by_content() {
        assert_eq!(Secret::from_slice(b"abc"), Secret::from_slice(b"abc"));
        assert_ne!(Secret::from_slice(b"abc"), Secret::from_slice(b"abd"));
        assert_ne!(Secret::from_slice(b"abc"), Secret::from_slice(b"abcd"));
        assert_eq!(Secret::from_slice(b""), Secret::from_slice(b""));
    }

    #[test]
    fn ct_eq_handles_lengths() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"xyz", b"xyz"));
        assert!(!ct_eq(b"xyz", b"xy"));
        assert!(!ct_eq(b"xyz", b"xyZ"));
    }
}
