//! The anti-replay window (RFC 4303 §3.4.3) as an RFC 6479 ring of 64-bit
//! blocks, with the high-order sequence bits of ESN inferred per RFC 4303
//! Appendix A2.2.
//!
//! ```text
//!            window: W sequence numbers ending at `top`
//!        |<------------------------------------------->|
//!   ... [ block b-k ][ block b-k+1 ] ... [ block b = top / 64 ]  (ring)
//!        too old  ◄──┘                                 └──► ahead: accept, slide
//! ```
//!
//! The ring holds one block more than the window needs (rounded up to a
//! power of two so the index is a mask): when `top` moves into a new block,
//! the blocks it skips are cleared in O(blocks skipped), never by shifting
//! the whole bitmap (RFC 6479 §2).
//!
//! The receiver checks a packet **before** verifying its ICV (cheap rejection
//! of replays) and updates the window only **after** the ICV verified, with
//! a second check, since another worker may have accepted the same number in
//! between (RFC 4303 §3.4.3: "the receive window is updated only if the
//! integrity verification succeeds").

/// Default window: 1024 sequence numbers (issue 4).
pub const DEFAULT_WINDOW: u32 = 1024;
/// Smallest window: one block.
pub const MIN_WINDOW: u32 = 64;
/// Largest window: 2^16 numbers, an 8 KiB bitmap per inbound SA.
pub const MAX_WINDOW: u32 = 1 << 16;

const BLOCK_BITS: u64 = 64;

/// Why the window refused a sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayError {
    /// Already received.
    Duplicate,
    /// Left of the window (or zero, which no sender ever uses: RFC 4303
    /// §3.3.3 starts at 1).
    TooOld,
}

/// A window size that is not a power of two in
/// [`MIN_WINDOW`]..=[`MAX_WINDOW`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("replay window {0} is not a power of two in {MIN_WINDOW}..={MAX_WINDOW}")]
pub struct BadWindowSize(pub u32);

/// The receive window of one inbound SA. Sequence numbers are the full
/// 64-bit values (for SAs without ESN, the high half is zero).
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// W.
    size: u64,
    /// The highest authenticated sequence number; 0 before the first.
    top: u64,
    ring: Box<[u64]>,
    /// `ring.len() - 1`.
    mask: u64,
}

impl ReplayWindow {
    /// A window of `size` numbers (a power of two, 64..=65536).
    pub fn new(size: u32) -> Result<ReplayWindow, BadWindowSize> {
        if !size.is_power_of_two() || !(MIN_WINDOW..=MAX_WINDOW).contains(&size) {
            return Err(BadWindowSize(size));
        }
        // Sequence numbers top-W+1 ..= top touch at most W/64 + 1 blocks.
        let blocks = (size as usize / BLOCK_BITS as usize + 1).next_power_of_two();
        Ok(ReplayWindow {
            size: u64::from(size),
            top: 0,
            ring: vec![0; blocks].into_boxed_slice(),
            mask: blocks as u64 - 1,
        })
    }

    /// The window size W.
    pub fn size(&self) -> u32 {
        self.size as u32
    }

    /// The highest sequence number accepted so far (0: none yet).
    pub fn top(&self) -> u64 {
        self.top
    }

    /// The full 64-bit sequence number of a packet carrying the low 32 bits
    /// `seq_lo`, for an SA with ESN (RFC 4303 Appendix A2.2). `None` if it
    /// would lie beyond 2^64 - 1.
    ///
    /// With `Th`/`Tl` the high/low halves of `top`:
    ///
    /// ```text
    /// Case A (Tl >= W - 1, window inside one 2^32 subspace):
    ///     seq_lo >= Tl - W + 1  → Seqh = Th       (in window or ahead)
    ///     otherwise             → Seqh = Th + 1   (wrapped: ahead)
    /// Case B (Tl <  W - 1, window spans two subspaces):
    ///     seq_lo >= Tl - W + 1 (mod 2^32) → Seqh = Th - 1 (old part of window)
    ///     otherwise                       → Seqh = Th
    /// ```
    pub fn infer_esn(&self, seq_lo: u32) -> Option<u64> {
        let th = (self.top >> 32) as u32;
        let tl = self.top as u32;
        let w = self.size as u32;
        let bottom = tl.wrapping_sub(w - 1);
        let seq_hi = if tl >= w - 1 {
            if seq_lo >= bottom {
                th
            } else {
                th.checked_add(1)?
            }
        } else if seq_lo >= bottom {
            // Before the first 2^32 packets there is no previous subspace:
            // the number is far ahead in this one.
            th.checked_sub(1).unwrap_or(th)
        } else {
            th
        };
        Some(u64::from(seq_hi) << 32 | u64::from(seq_lo))
    }

    /// Whether `seq` would be accepted, without changing the window.
    pub fn check(&self, seq: u64) -> Result<(), ReplayError> {
        if seq == 0 {
            return Err(ReplayError::TooOld);
        }
        if seq > self.top {
            return Ok(());
        }
        if self.top - seq >= self.size {
            return Err(ReplayError::TooOld);
        }
        if self.ring[self.block(seq)] & bit(seq) != 0 {
            return Err(ReplayError::Duplicate);
        }
        Ok(())
    }

    /// Checks `seq` again and records it: call only once the packet's ICV
    /// verified.
    pub fn check_and_update(&mut self, seq: u64) -> Result<(), ReplayError> {
        self.check(seq)?;
        if seq > self.top {
            let from = self.top / BLOCK_BITS;
            let to = seq / BLOCK_BITS;
            if to - from > self.mask {
                self.ring.fill(0);
            } else {
                // Clear the blocks `top` moves into; the current block's bits
                // above the old top are zero already (nothing above top is
                // ever set).
                for b in from + 1..=to {
                    self.ring[(b & self.mask) as usize] = 0;
                }
            }
            self.top = seq;
        }
        let i = self.block(seq);
        self.ring[i] |= bit(seq);
        Ok(())
    }

    fn block(&self, seq: u64) -> usize {
        ((seq / BLOCK_BITS) & self.mask) as usize
    }
}

fn bit(seq: u64) -> u64 {
    1 << (seq % BLOCK_BITS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReplayError::*;

    fn accept(w: &mut ReplayWindow, seq: u64) -> Result<(), ReplayError> {
        w.check(seq)?;
        w.check_and_update(seq)
    }

    #[test]
    fn sizes() {
        for ok in [64, 128, 1024, 65536] {
            let w = ReplayWindow::new(ok).unwrap();
            assert_eq!(w.size(), ok);
            assert!(w.ring.len() as u64 * 64 >= u64::from(ok) + 64);
        }
        for bad in [0, 1, 32, 100, 1000, 131072] {
            assert_eq!(ReplayWindow::new(bad).unwrap_err(), BadWindowSize(bad));
        }
        assert_eq!(ReplayWindow::new(DEFAULT_WINDOW).unwrap().ring.len(), 32);
    }

    #[test]
    fn in_order_duplicates_and_zero() {
        let mut w = ReplayWindow::new(64).unwrap();
        assert_eq!(w.check(0), Err(TooOld));
        for s in 1..=200 {
            assert_eq!(accept(&mut w, s), Ok(()));
            assert_eq!(w.check(s), Err(Duplicate));
        }
        assert_eq!(w.top(), 200);
    }

    #[test]
    fn window_edges() {
        let mut w = ReplayWindow::new(64).unwrap();
        accept(&mut w, 100).unwrap();
        // top - W + 1 = 37 is the oldest acceptable number, 36 too old.
        assert_eq!(w.check(37), Ok(()));
        assert_eq!(w.check(36), Err(TooOld));
        assert_eq!(accept(&mut w, 37), Ok(()));
        assert_eq!(accept(&mut w, 37), Err(Duplicate));
        assert_eq!(accept(&mut w, 99), Ok(()));
        assert_eq!(accept(&mut w, 100), Err(Duplicate));
        // Slide by one: 37 falls out.
        accept(&mut w, 101).unwrap();
        assert_eq!(w.check(37), Err(TooOld));
        assert_eq!(w.check(38), Ok(()));
        assert_eq!(w.check(99), Err(Duplicate));
    }

    #[test]
    fn reordering_inside_the_window_is_accepted_once() {
        let mut w = ReplayWindow::new(1024).unwrap();
        // A permutation of 1..=2000 in which no number arrives more than
        // 1023 behind the current top.
        let mut order: Vec<u64> = (1..=2000).collect();
        for chunk in order.chunks_mut(500) {
            chunk.reverse();
        }
        for &s in &order {
            assert_eq!(accept(&mut w, s), Ok(()), "seq {s}");
        }
        for &s in &order[order.len() - 1000..] {
            assert_eq!(w.check(s), Err(Duplicate), "seq {s}");
        }
    }

    #[test]
    fn far_ahead_jump_clears_everything() {
        let mut w = ReplayWindow::new(128).unwrap();
        for s in 1..=128 {
            accept(&mut w, s).unwrap();
        }
        accept(&mut w, 1_000_000).unwrap();
        assert_eq!(w.check(128), Err(TooOld));
        // Inside the new window, nothing is marked but the top.
        for s in 1_000_000 - 127..1_000_000 {
            assert_eq!(w.check(s), Ok(()), "seq {s}");
        }
        // A jump of exactly the ring's length in blocks (aliasing case).
        let mut w = ReplayWindow::new(64).unwrap();
        accept(&mut w, 64).unwrap();
        let jump = 64 + w.ring.len() as u64 * 64;
        accept(&mut w, jump).unwrap();
        assert_eq!(w.check(jump - 1), Ok(()));
        assert_eq!(w.check(jump - 63), Ok(()));
        assert_eq!(w.check(jump), Err(Duplicate));
    }

    /// Every block the window slides over is cleared, for every slide
    /// distance up to twice the ring: a model check against a set.
    #[test]
    fn matches_a_set_model() {
        use std::collections::BTreeSet;
        let mut rng = anyhub_crypto::SeededRng::new(9);
        let mut next = |m: u64| {
            let mut b = [0u8; 8];
            anyhub_crypto::Rng::fill(&mut rng, &mut b);
            u64::from_le_bytes(b) % m
        };
        for size in [64, 256, 1024] {
            let mut w = ReplayWindow::new(size).unwrap();
            let size = u64::from(size);
            let mut seen = BTreeSet::new();
            let mut top = 0u64;
            for _ in 0..20_000 {
                // Mostly near the top, sometimes far ahead or far behind.
                let seq = match next(10) {
                    0 => top + next(4 * size) + 1,
                    1 => top.saturating_sub(next(4 * size)),
                    _ => (top + 8).saturating_sub(next(size + 16)),
                };
                let expect = if seq == 0 || (seq <= top && top - seq >= size) {
                    Err(TooOld)
                } else if seen.contains(&seq) {
                    Err(Duplicate)
                } else {
                    Ok(())
                };
                assert_eq!(
                    accept(&mut w, seq),
                    expect,
                    "size {size} top {top} seq {seq}"
                );
                if expect.is_ok() {
                    seen.insert(seq);
                    top = top.max(seq);
                }
            }
        }
    }

    #[test]
    fn esn_inference_cases() {
        let w64 = |top: u64| {
            let mut w = ReplayWindow::new(64).unwrap();
            if top != 0 {
                w.check_and_update(top).unwrap();
            }
            w
        };
        // Case A: Th = 0, Tl = 1000.
        let w = w64(1000);
        assert_eq!(w.infer_esn(1001), Some(1001)); // ahead
        assert_eq!(w.infer_esn(937), Some(937)); // oldest in window
        assert_eq!(w.infer_esn(936), Some(1 << 32 | 936)); // wrapped ahead
        assert_eq!(w.infer_esn(5), Some(1 << 32 | 5));

        // Case A just below the wrap: Tl = 2^32 - 1.
        let w = w64(0xffff_ffff);
        assert_eq!(w.infer_esn(0), Some(1 << 32)); // first of the next subspace
        assert_eq!(w.infer_esn(7), Some(1 << 32 | 7));
        assert_eq!(w.infer_esn(0xffff_fff0), Some(0xffff_fff0));

        // Case B: top = 2^32 + 10, the window reaches back into subspace 0.
        let w = w64(1 << 32 | 10);
        assert_eq!(w.infer_esn(11), Some(1 << 32 | 11)); // ahead
        assert_eq!(w.infer_esn(3), Some(1 << 32 | 3)); // in window, this subspace
        assert_eq!(w.infer_esn(0xffff_fff0), Some(0xffff_fff0)); // in window, previous
        let bottom = (10u32).wrapping_sub(63);
        assert_eq!(w.infer_esn(bottom), Some(u64::from(bottom)));
        assert_eq!(
            w.infer_esn(bottom - 1),
            Some(1 << 32 | u64::from(bottom - 1))
        ); // far ahead

        // Before anything arrived (Th = 0, case B): no previous subspace.
        let w = w64(0);
        assert_eq!(w.infer_esn(1), Some(1));
        assert_eq!(w.infer_esn(0xffff_ffff), Some(0xffff_ffff));

        // The very last subspace: no next one.
        let w = w64(0xffff_ffff_0000_1000);
        assert_eq!(w.infer_esn(5), None);
    }

    /// Accepting across the 2^32 boundary with ESN: the window works on the
    /// 64-bit numbers, so numbers on both sides stay distinct.
    #[test]
    fn esn_wrap() {
        let mut w = ReplayWindow::new(64).unwrap();
        let base = (1u64 << 32) - 40;
        for s in base..base + 80 {
            let inferred = w.infer_esn(s as u32).unwrap();
            assert_eq!(inferred, s);
            assert_eq!(accept(&mut w, inferred), Ok(()));
        }
        // A replay of a pre-wrap number is recognised as the old one.
        let old = base + 30; // 2^32 - 10, still in the window
        assert_eq!(w.infer_esn(old as u32), Some(old));
        assert_eq!(w.check(old), Err(Duplicate));
        // The low half of a post-wrap number inside the window: duplicate too.
        assert_eq!(w.check(w.infer_esn(5).unwrap()), Err(Duplicate));
        // Without ESN the same low bits would be "too old" in a 32-bit window
        // (what a non-ESN SA sees: its sender must rekey before wrapping).
    }
}
