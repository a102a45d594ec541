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

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};

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
        let blocks = ring_blocks(size);
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
        infer_esn(self.top, self.size, seq_lo)
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

/// RFC 4303 Appendix A2.2 for a window of `size` whose top is `top`.
fn infer_esn(top: u64, size: u64, seq_lo: u32) -> Option<u64> {
    let th = (top >> 32) as u32;
    let tl = top as u32;
    let w = size as u32;
    let bottom = tl.wrapping_sub(w - 1);
    let seq_hi = if tl >= w - 1 {
        if seq_lo >= bottom {
            th
        } else {
            th.checked_add(1)?
        }
    } else if seq_lo >= bottom {
        // Before the first 2^32 packets there is no previous subspace: the
        // number is far ahead in this one.
        th.checked_sub(1).unwrap_or(th)
    } else {
        th
    };
    Some(u64::from(seq_hi) << 32 | u64::from(seq_lo))
}

fn ring_blocks(size: u32) -> usize {
    // Sequence numbers top-W+1 ..= top touch at most W/64 + 1 blocks.
    (size as usize / BLOCK_BITS as usize + 1).next_power_of_two()
}

/// Sequence numbers per slot of the [`AtomicReplayWindow`] ring.
const SLOT_SEQS: u64 = 16;
/// The slot's tag: the low 48 bits of its block number (seq / 16).
const TAG_MASK: u64 = (1 << 48) - 1;

/// The same window for many workers at once, without a lock: what
/// [`super::InboundSa`] uses.
///
/// Each ring slot is one `AtomicU64` holding a 16-bit bitmap and the
/// 48-bit number of the block of 16 sequence numbers it currently holds:
///
/// ```text
/// | block tag (48) | bitmap (16) |      slot i holds block b with b ≡ i (mod ring)
/// ```
///
/// Recording a number is one compare-and-swap on its slot: same tag → set
/// the bit (already set: duplicate); older tag → the slot is recycled for
/// this block, bitmap = this bit alone; newer tag → the number is too old.
/// Because recycling and marking are the same atomic step, and a slot's
/// tag only ever grows, a number can be accepted at most once, whatever the
/// interleaving of workers. `top` moves with `fetch_max` afterwards and
/// serves the "left of the window" test and ESN inference.
///
/// Tags compare modulo 2^48: wrong only for numbers 2^51 apart (years of
/// traffic at line rate), and such an ancient number fails the 64-bit
/// `top` test first. A worker with a stale `top` may accept a number a
/// little older than W, never one that was accepted before.
///
/// (A first version cleared blocks on a window slide and set bits with
/// `fetch_or`; the threaded test below caught it accepting a number twice
/// when a worker marked a block another worker had just recycled.)
#[derive(Debug)]
pub struct AtomicReplayWindow {
    size: u64,
    top: AtomicU64,
    ring: Box<[AtomicU64]>,
    mask: u64,
}

impl AtomicReplayWindow {
    /// A window of `size` numbers (a power of two, 64..=65536).
    pub fn new(size: u32) -> Result<AtomicReplayWindow, BadWindowSize> {
        ReplayWindow::new(size)?;
        // Numbers top-W+1 ..= top touch at most W/16 + 1 slots.
        let slots = (size as usize / SLOT_SEQS as usize + 1).next_power_of_two();
        Ok(AtomicReplayWindow {
            size: u64::from(size),
            top: AtomicU64::new(0),
            ring: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            mask: slots as u64 - 1,
        })
    }

    pub fn size(&self) -> u32 {
        self.size as u32
    }

    /// The highest sequence number accepted so far (0: none yet).
    pub fn top(&self) -> u64 {
        self.top.load(Acquire)
    }

    /// As [`ReplayWindow::infer_esn`], from the current top.
    pub fn infer_esn(&self, seq_lo: u32) -> Option<u64> {
        infer_esn(self.top(), self.size, seq_lo)
    }

    /// The test left of the window, and where `seq` lives.
    #[inline]
    fn locate(&self, seq: u64) -> Result<(&AtomicU64, u64, u64), ReplayError> {
        let top = self.top();
        if seq == 0 || (seq <= top && top - seq >= self.size) {
            return Err(ReplayError::TooOld);
        }
        let block = seq / SLOT_SEQS;
        let slot = &self.ring[(block & self.mask) as usize];
        Ok((slot, block & TAG_MASK, 1 << (seq % SLOT_SEQS)))
    }

    /// Whether `seq` would be accepted now (the check before the ICV).
    pub fn check(&self, seq: u64) -> Result<(), ReplayError> {
        let (slot, tag, bit) = self.locate(seq)?;
        let v = slot.load(Acquire);
        match tag_order(tag, v >> 16) {
            TagOrder::Same if v & bit != 0 => Err(ReplayError::Duplicate),
            TagOrder::Older => Err(ReplayError::TooOld),
            _ => Ok(()),
        }
    }

    /// Records `seq` unless it is too old or already recorded: call once
    /// the packet's ICV verified.
    pub fn check_and_update(&self, seq: u64) -> Result<(), ReplayError> {
        let (slot, tag, bit) = self.locate(seq)?;
        let mut cur = slot.load(Acquire);
        loop {
            let new = match tag_order(tag, cur >> 16) {
                TagOrder::Same if cur & bit != 0 => return Err(ReplayError::Duplicate),
                TagOrder::Same => cur | bit,
                TagOrder::Newer => tag << 16 | bit,
                TagOrder::Older => return Err(ReplayError::TooOld),
            };
            match slot.compare_exchange_weak(cur, new, AcqRel, Acquire) {
                Ok(_) => break,
                Err(v) => cur = v,
            }
        }
        self.top.fetch_max(seq, Release);
        Ok(())
    }
}

/// How a number's block compares with the block a slot holds.
enum TagOrder {
    Same,
    /// The number's block is newer: the slot may be recycled for it.
    Newer,
    /// The slot already holds a newer block: the number is too old.
    Older,
}

#[inline]
fn tag_order(ours: u64, slot: u64) -> TagOrder {
    let d = ours.wrapping_sub(slot) & TAG_MASK;
    if d == 0 {
        TagOrder::Same
    } else if d < 1 << 47 {
        TagOrder::Newer
    } else {
        TagOrder::Older
    }
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

    /// Both windows behind one interface, for the model tests.
    trait Window {
        fn accept(&mut self, seq: u64) -> Result<(), ReplayError>;
    }
    impl Window for ReplayWindow {
        fn accept(&mut self, seq: u64) -> Result<(), ReplayError> {
            accept(self, seq)
        }
    }
    impl Window for AtomicReplayWindow {
        fn accept(&mut self, seq: u64) -> Result<(), ReplayError> {
            self.check(seq)?;
            self.check_and_update(seq)
        }
    }

    #[test]
    fn matches_a_set_model() {
        for size in [64, 256, 1024] {
            set_model(&mut ReplayWindow::new(size).unwrap(), size);
            set_model(&mut AtomicReplayWindow::new(size).unwrap(), size);
        }
    }

    /// Every block the window slides over is cleared, for every slide
    /// distance up to twice the ring: a model check against a set.
    fn set_model(w: &mut impl Window, size: u32) {
        use std::collections::BTreeSet;
        let mut rng = anyhub_crypto::SeededRng::new(9);
        let mut next = |m: u64| {
            let mut b = [0u8; 8];
            anyhub_crypto::Rng::fill(&mut rng, &mut b);
            u64::from_le_bytes(b) % m
        };
        {
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
                assert_eq!(w.accept(seq), expect, "size {size} top {top} seq {seq}");
                if expect.is_ok() {
                    seen.insert(seq);
                    top = top.max(seq);
                }
            }
        }
    }

    /// Four workers offer the same numbers in different orders: no number
    /// is ever accepted twice, and with a window wide enough for the
    /// reordering every number is accepted once.
    #[test]
    fn atomic_window_accepts_each_number_once_across_threads() {
        use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
        use std::sync::Arc;
        const N: u64 = 60_000;
        for size in [65536, 64] {
            let w = Arc::new(AtomicReplayWindow::new(size).unwrap());
            let hits: Arc<Vec<AtomicU8>> = Arc::new((0..=N).map(|_| AtomicU8::new(0)).collect());
            let hs: Vec<_> = (0..4u64)
                .map(|t| {
                    let (w, hits) = (w.clone(), hits.clone());
                    std::thread::spawn(move || {
                        for i in 1..=N {
                            // Thread-specific local reordering.
                            let seq = match t {
                                0 => i,
                                1 => (i ^ 1).max(1),
                                2 => (i ^ 7).max(1),
                                // With the small window: a scattered order
                                // (far jumps ahead and back, slots
                                // recycled under the other workers).
                                _ if size == 64 => i * 7919 % N + 1,
                                _ => (i ^ 31).max(1),
                            }
                            .min(N);
                            if w.check(seq).is_ok() && w.check_and_update(seq).is_ok() {
                                hits[seq as usize].fetch_add(1, Relaxed);
                            }
                        }
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
            let twice: Vec<usize> = (1..=N as usize)
                .filter(|&i| hits[i].load(Relaxed) > 1)
                .collect();
            assert!(
                twice.is_empty(),
                "size {size}: accepted twice: {:?}",
                &twice[..twice.len().min(10)]
            );
            if size == 65536 {
                let missed = (1..=N as usize)
                    .filter(|&i| hits[i].load(Relaxed) == 0)
                    .count();
                assert_eq!(missed, 0, "a fresh number inside the window was refused");
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
