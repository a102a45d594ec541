//! Defence against IKE_SA_INIT floods (RFC 7296 §2.6, RFC 8019): the
//! half-open table is bounded in total and per peer address, and once it
//! fills past a threshold the responder answers statelessly with a COOKIE
//! that only a peer receiving our datagrams can echo.
//!
//! ```text
//!   Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>)   (§2.6)
//! ```
//!
//! Hash is HMAC-SHA-256 keyed with the secret, truncated to 16 octets. The
//! secret changes every [`SECRET_LIFETIME`]; cookies made with the previous
//! one stay valid until the next change, so a peer that got a cookie just
//! before a change can still use it.

use anyhub_crypto::prf::Prf;
use anyhub_crypto::secret::ct_eq;
use anyhub_crypto::{Rng, Secret};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How long one cookie secret is used.
pub(super) const SECRET_LIFETIME: Duration = Duration::from_secs(120);
/// Length of the hash part of a cookie.
const COOKIE_HASH_LEN: usize = 16;

/// The cookie secrets: the current one and its predecessor.
pub(super) struct Cookies {
    version: u8,
    current: Secret,
    previous: Option<Secret>,
    rotate_at: Instant,
}

impl Cookies {
    pub(super) fn new(now: Instant, rng: &mut dyn Rng) -> Cookies {
        Cookies {
            version: 0,
            current: fresh(rng),
            previous: None,
            rotate_at: now + SECRET_LIFETIME,
        }
    }

    /// Changes the secret if its time is up.
    pub(super) fn rotate(&mut self, now: Instant, rng: &mut dyn Rng) {
        if now < self.rotate_at {
            return;
        }
        let old = std::mem::replace(&mut self.current, fresh(rng));
        self.previous = Some(old);
        self.version = self.version.wrapping_add(1);
        self.rotate_at = now + SECRET_LIFETIME;
    }

    /// The cookie for an initiator's nonce, address and SPI.
    pub(super) fn make(&self, nonce_i: &[u8], ip: IpAddr, spi_i: u64) -> Vec<u8> {
        let mut c = Vec::with_capacity(1 + COOKIE_HASH_LEN);
        c.push(self.version);
        c.extend_from_slice(&hash(&self.current, nonce_i, ip, spi_i));
        c
    }

    /// Whether `cookie` is one we made (with the current secret or the
    /// previous one) for these values.
    pub(super) fn verify(&self, cookie: &[u8], nonce_i: &[u8], ip: IpAddr, spi_i: u64) -> bool {
        let [version, mac @ ..] = cookie else {
            return false;
        };
        let secret = if *version == self.version {
            &self.current
        } else if *version == self.version.wrapping_sub(1) {
            match &self.previous {
                Some(p) => p,
                None => return false,
            }
        } else {
            return false;
        };
        ct_eq(mac, &hash(secret, nonce_i, ip, spi_i))
    }
}

fn fresh(rng: &mut dyn Rng) -> Secret {
    let mut k = vec![0u8; 32];
    rng.fill(&mut k);
    Secret::new(k)
}

fn hash(secret: &Secret, nonce_i: &[u8], ip: IpAddr, spi_i: u64) -> [u8; COOKIE_HASH_LEN] {
    let ip = match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mac = Prf::HmacSha256.compute(secret.as_bytes(), &[nonce_i, &ip, &spi_i.to_be_bytes()]);
    mac.as_bytes()[..COOKIE_HASH_LEN]
        .try_into()
        .expect("HMAC-SHA-256 is 32 octets")
}

/// Half-open IKE SAs (answered IKE_SA_INIT, no IKE_AUTH yet) by key and by
/// peer address, so both bounds are checked in O(1).
pub(super) struct HalfOpen<H> {
    by_key: HashMap<(u64, SocketAddr), H>,
    by_ip: HashMap<IpAddr, u32>,
}

impl<H> Default for HalfOpen<H> {
    fn default() -> Self {
        HalfOpen {
            by_key: HashMap::new(),
            by_ip: HashMap::new(),
        }
    }
}

impl<H: Copy> HalfOpen<H> {
    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }

    pub(super) fn get(&self, spi_i: u64, remote: SocketAddr) -> Option<H> {
        self.by_key.get(&(spi_i, remote)).copied()
    }

    /// How many half-open SAs this peer address has.
    pub(super) fn of_ip(&self, ip: IpAddr) -> u32 {
        self.by_ip.get(&ip).copied().unwrap_or(0)
    }

    pub(super) fn insert(&mut self, spi_i: u64, remote: SocketAddr, h: H) {
        if self.by_key.insert((spi_i, remote), h).is_none() {
            *self.by_ip.entry(remote.ip()).or_default() += 1;
        }
    }

    pub(super) fn remove(&mut self, spi_i: u64, remote: SocketAddr) {
        if self.by_key.remove(&(spi_i, remote)).is_some() {
            if let Some(n) = self.by_ip.get_mut(&remote.ip()) {
                *n -= 1;
                if *n == 0 {
                    self.by_ip.remove(&remote.ip());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhub_crypto::SeededRng;

    #[test]
    fn cookies_verify_for_their_inputs_only() {
        let now = Instant::now();
        let mut rng = SeededRng::new(1);
        let c = Cookies::new(now, &mut rng);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let cookie = c.make(b"nonce-nonce-nonce", ip, 7);
        assert_eq!(cookie.len(), 17);
        assert!(c.verify(&cookie, b"nonce-nonce-nonce", ip, 7));
        assert!(!c.verify(&cookie, b"nonce-nonce-noncf", ip, 7));
        assert!(!c.verify(
            &cookie,
            b"nonce-nonce-nonce",
            "192.0.2.2".parse().unwrap(),
            7
        ));
        assert!(!c.verify(&cookie, b"nonce-nonce-nonce", ip, 8));
        let mut bad = cookie.clone();
        bad[5] ^= 1;
        assert!(!c.verify(&bad, b"nonce-nonce-nonce", ip, 7));
        assert!(!c.verify(&[], b"nonce-nonce-nonce", ip, 7));
        assert!(!c.verify(&cookie[..9], b"nonce-nonce-nonce", ip, 7));
    }

    #[test]
    fn a_cookie_survives_one_rotation_not_two() {
        let now = Instant::now();
        let mut rng = SeededRng::new(2);
        let mut c = Cookies::new(now, &mut rng);
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let cookie = c.make(b"n", ip, 1);
        c.rotate(now + Duration::from_secs(1), &mut rng);
        assert!(c.verify(&cookie, b"n", ip, 1), "not yet rotated");
        c.rotate(now + SECRET_LIFETIME, &mut rng);
        assert!(
            c.verify(&cookie, b"n", ip, 1),
            "previous secret still accepted"
        );
        assert_ne!(c.make(b"n", ip, 1), cookie);
        c.rotate(now + SECRET_LIFETIME * 2, &mut rng);
        assert!(
            !c.verify(&cookie, b"n", ip, 1),
            "two rotations later it is stale"
        );
    }

    #[test]
    fn half_open_counts_per_address() {
        let mut h = HalfOpen::default();
        let a: SocketAddr = "192.0.2.1:500".parse().unwrap();
        let a2: SocketAddr = "192.0.2.1:4500".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:500".parse().unwrap();
        h.insert(1, a, 10u32);
        h.insert(2, a2, 11);
        h.insert(2, a2, 11); // again: no double count
        h.insert(3, b, 12);
        assert_eq!(h.len(), 3);
        assert_eq!(h.of_ip(a.ip()), 2);
        assert_eq!(h.get(2, a2), Some(11));
        h.remove(1, a);
        h.remove(1, a); // again: nothing
        assert_eq!(h.of_ip(a.ip()), 1);
        h.remove(2, a2);
        assert_eq!(h.of_ip(a.ip()), 0);
        assert_eq!(h.len(), 1);
        assert!(h.by_ip.len() == 1, "empty entries are dropped");
    }
}
