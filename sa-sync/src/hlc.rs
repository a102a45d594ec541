//! A hybrid logical clock (Kulkarni et al., "Logical Physical Clocks",
//! 2014): versions that follow wall time where clocks agree and causality
//! where they do not.
//!
//! ```text
//! hlc (64 bits):  | wall milliseconds since the Unix epoch (48) | logical (16) |
//! ```
//!
//! A node's next version is above both its wall clock and every version it
//! has seen. So a delete written by a node after it applied an install is
//! newer than that install even if the deleting node's clock is behind:
//! last-writer-wins by HLC never lets a stale install beat a later delete.

/// Bits of the logical counter.
pub const LOGICAL_BITS: u32 = 16;

/// The wall-clock milliseconds of an HLC value.
pub fn wall_ms(hlc: u64) -> u64 {
    hlc >> LOGICAL_BITS
}

/// The clock of one node.
#[derive(Clone, Debug, Default)]
pub struct Hlc {
    last: u64,
}

impl Hlc {
    pub fn new() -> Hlc {
        Hlc { last: 0 }
    }

    /// A new version, strictly above every one this clock handed out or saw.
    pub fn tick(&mut self, wall_ms: u64) -> u64 {
        let physical = wall_ms << LOGICAL_BITS;
        self.last = physical.max(self.last + 1);
        self.last
    }

    /// Takes a version seen from another node into account. Returns whether
    /// it lies more than `max_skew_ms` ahead of our wall clock (counted by
    /// the caller: a clock that far off needs an operator; the clock still
    /// follows, because refusing would let an older write win).
    pub fn observe(&mut self, remote: u64, wall_ms: u64, max_skew_ms: u64) -> bool {
        self.last = self.last.max(remote);
        self::wall_ms(remote) > wall_ms.saturating_add(max_skew_ms)
    }

    pub fn last(&self) -> u64 {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_causal() {
        let mut a = Hlc::new();
        let v1 = a.tick(1000);
        let v2 = a.tick(1000);
        assert!(v2 > v1);
        assert_eq!(wall_ms(v1), 1000);
        // A clock going backwards does not make versions go backwards.
        let v3 = a.tick(500);
        assert!(v3 > v2);
        // b's clock is 10 s behind, but after seeing a's version its next
        // version is newer.
        let mut b = Hlc::new();
        assert!(!b.observe(v3, 990, 60_000));
        assert!(b.tick(990) > v3);
        // Far in the future: flagged, still followed.
        assert!(b.observe((1_000_000) << LOGICAL_BITS, 990, 60_000));
        assert!(b.tick(990) > 1_000_000 << LOGICAL_BITS);
    }
}
