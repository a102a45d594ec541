//! SPIs that name their owner (DESIGN.md, "partition identifiers").
//!
//! Every SPI a node allocates carries the node's index in its high bits, so
//! any node can tell from a packet alone which node owns the state behind it
//! (an IKE message that lands on the wrong node is forwarded to the owner).
//!
//! ```text
//! IKE SPI (64 bits):      | node index (12) | random (52)            |
//! ESP/AH SPI (32 bits):   | node index (12) | random (20)            |
//! ```
//!
//! Index 0 is never a valid node, so an ESP SPI is never in the reserved
//! range 1..=255 (RFC 4303 §2.1) and an IKE SPI is never zero (§3.1).

use crate::config::MAX_NODE_INDEX;
use anyhub_crypto::Rng;

const NODE_BITS: u32 = 12;

/// A fresh IKE SPI owned by `node` (1..=4095).
pub fn new_ike_spi(node: u16, rng: &mut dyn Rng) -> u64 {
    debug_assert!((1..=MAX_NODE_INDEX).contains(&node));
    let mut b = [0u8; 8];
    rng.fill(&mut b);
    let random = u64::from_be_bytes(b) >> NODE_BITS;
    ((node as u64) << (64 - NODE_BITS)) | random
}

/// The node that allocated an IKE SPI (as responder SPI for IKE SAs others
/// initiated, as initiator SPI for those we initiated).
pub fn ike_spi_owner(spi: u64) -> u16 {
    (spi >> (64 - NODE_BITS)) as u16
}

/// A fresh inbound ESP SPI owned by `node`.
pub fn new_esp_spi(node: u16, rng: &mut dyn Rng) -> u32 {
    debug_assert!((1..=MAX_NODE_INDEX).contains(&node));
    let mut b = [0u8; 4];
    rng.fill(&mut b);
    let random = u32::from_be_bytes(b) >> NODE_BITS;
    ((node as u32) << (32 - NODE_BITS)) | random
}

/// The node that allocated an inbound ESP SPI.
pub fn esp_spi_owner(spi: u32) -> u16 {
    (spi >> (32 - NODE_BITS)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhub_crypto::SeededRng;

    #[test]
    fn owner_round_trips_for_every_node() {
        let mut rng = SeededRng::new(7);
        for node in 1..=MAX_NODE_INDEX {
            let s = new_ike_spi(node, &mut rng);
            assert_eq!(ike_spi_owner(s), node);
            assert_ne!(s, 0);
            let e = new_esp_spi(node, &mut rng);
            assert_eq!(esp_spi_owner(e), node);
            assert!(e > 255, "ESP SPI {e} is in the reserved range");
        }
    }

    #[test]
    fn spis_differ() {
        let mut rng = SeededRng::new(1);
        let a: Vec<u64> = (0..1000).map(|_| new_ike_spi(3, &mut rng)).collect();
        let mut b = a.clone();
        b.sort();
        b.dedup();
        assert_eq!(a.len(), b.len());
    }
}
