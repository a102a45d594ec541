//! Diffie-Hellman for the IKEv2 Key Exchange payload (RFC 7296 §3.4):
//! MODP-2048 (group 14, RFC 3526 §3), ECP-256/384 (groups 19/20,
//! RFC 5903) and Curve25519 (group 31, RFC 8031).
//!
//! Wire formats, for both public values and shared secrets:
//!
//! | group | public value | shared secret |
//! |---|---|---|
//! | MODP-2048 | g^x mod p, big-endian, left-padded to 256 bytes | g^xy mod p, same encoding |
//! | ECP-256/384 | x ‖ y, each coordinate fixed length, no 0x04 prefix (RFC 5903 §7) | x coordinate of the product only (RFC 5903 §7) |
//! | Curve25519 | the 32-byte u-coordinate (RFC 8031 §2) | 32-byte X25519 output |
//!
//! Every private key is drawn from the caller's [`Rng`], so key exchanges
//! are reproducible under [`crate::SeededRng`].

use std::fmt;

use boring::bn::{BigNum, BigNumContext};
use boring::ec::{EcGroup, EcGroupRef, EcPoint, EcPointRef};
use boring::nid::Nid;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::secret::ct_eq;
use crate::sys::{ModpDh, MODP2048_LEN};
use crate::{CryptoError, Rng, Secret};

/// A Diffie-Hellman group (IKEv2 Transform Type 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DhGroup {
    /// 2048-bit MODP group (group 14, RFC 3526 §3).
    Modp2048,
    /// 256-bit random ECP group, NIST P-256 (group 19, RFC 5903).
    Ecp256,
    /// 384-bit random ECP group, NIST P-384 (group 20, RFC 5903).
    Ecp384,
    /// Curve25519 (group 31, RFC 8031).
    Curve25519,
}

/// Private exponent length for MODP-2048. RFC 3526 §8 rates the group at
/// 110–160 bits of strength and suggests exponents of 220–320 bits; 384
/// bits clears the top of that range at a modest cost in exponentiation
/// time (NIST SP 800-56A asks for at least 224).
const MODP_EXPONENT_LEN: usize = 48;

/// Longest private key we draw (MODP exponent, P-384 scalar).
const MAX_PRIVATE_LEN: usize = 48;

/// How many out-of-range private keys in a row we tolerate before deciding
/// the `Rng` is broken. For an honest generator a single rejection has
/// probability below 2^-32 (P-256), so this is never reached.
const MAX_DRAWS: usize = 64;

impl DhGroup {
    /// Length of a public value (the KE payload's Key Exchange Data).
    pub fn public_len(self) -> usize {
        match self {
            DhGroup::Modp2048 => MODP2048_LEN,
            DhGroup::Ecp256 => 64,
            DhGroup::Ecp384 => 96,
            DhGroup::Curve25519 => 32,
        }
    }

    /// Length of the shared secret g^ir that [`KeyPair::agree`] returns.
    pub fn shared_secret_len(self) -> usize {
        match self {
            DhGroup::Modp2048 => MODP2048_LEN,
            DhGroup::Ecp256 | DhGroup::Curve25519 => 32,
            DhGroup::Ecp384 => 48,
        }
    }

    /// Length of the random private key drawn in [`KeyPair::generate`].
    fn private_len(self) -> usize {
        match self {
            DhGroup::Modp2048 => MODP_EXPONENT_LEN,
            DhGroup::Ecp256 | DhGroup::Curve25519 => 32,
            DhGroup::Ecp384 => 48,
        }
    }

    /// The curve and coordinate length of an ECP group.
    fn curve(self) -> Option<(Nid, usize)> {
        match self {
            DhGroup::Ecp256 => Some((Nid::X9_62_PRIME256V1, 32)),
            DhGroup::Ecp384 => Some((Nid::SECP384R1, 48)),
            DhGroup::Modp2048 | DhGroup::Curve25519 => None,
        }
    }
}

/// An ephemeral key pair: our private key and the public value we send.
///
/// The private part is wiped on drop and never printed. `Send + Sync`.
pub struct KeyPair {
    group: DhGroup,
    public: Vec<u8>,
    private: Private,
}

enum Private {
    Modp(ModpDh),
    Ecp(EcPrivate),
    X25519(StaticSecret),
}

/// An ECP private scalar with its curve.
struct EcPrivate {
    curve: EcGroup,
    /// In [1, n-1]. Cleared on drop.
    scalar: BigNum,
    coord_len: usize,
}

impl Drop for EcPrivate {
    fn drop(&mut self) {
        self.scalar.clear();
    }
}

/// A BigNum holding an intermediate secret, cleared on drop.
struct SecretBn(BigNum);

impl Drop for SecretBn {
    fn drop(&mut self) {
        self.0.clear();
    }
}

fn backend<E>(_: E) -> CryptoError {
    CryptoError::Backend
}

impl KeyPair {
    /// Draws a private key for `group` from `rng` and computes the public
    /// value:
    ///
    /// - MODP-2048: a 384-bit exponent x ≥ 2; public g^x mod p.
    /// - ECP-256/384: a scalar in [1, n-1], by rejection sampling (redraw
    ///   when out of range); public x ‖ y of the scalar times the generator.
    /// - Curve25519: 32 random bytes as an X25519 private key (clamped by
    ///   X25519 itself); public X25519(k, 9).
    ///
    /// # Panics
    ///
    /// If BoringSSL fails internally (it can only fail to allocate), or if
    /// `rng` produces out-of-range private keys 64 times in a row (an
    /// all-zero generator would).
    pub fn generate(group: DhGroup, rng: &mut dyn Rng) -> KeyPair {
        let mut buf = Zeroizing::new([0u8; MAX_PRIVATE_LEN]);
        let private = &mut buf[..group.private_len()];
        for _ in 0..MAX_DRAWS {
            rng.fill(private);
            match KeyPair::from_private(group, private) {
                Ok(pair) => return pair,
                Err(CryptoError::BadKeyLength) => continue,
                Err(e) => panic!("{group:?} key generation failed: {e}"),
            }
        }
        panic!("Rng produced {MAX_DRAWS} out-of-range {group:?} private keys in a row");
    }

    /// Builds a key pair from a fixed private key (big-endian exponent or
    /// scalar for MODP/ECP, RFC 7748 scalar bytes for Curve25519). Used by
    /// `generate` and by tests with published vectors.
    ///
    /// Returns [`CryptoError::BadKeyLength`] for a private key that has the
    /// wrong length or is out of range (MODP: x < 2; ECP: 0 or ≥ n).
    pub(crate) fn from_private(group: DhGroup, private: &[u8]) -> Result<KeyPair, CryptoError> {
        let (public, private) = match group {
            DhGroup::Modp2048 => {
                let (last, high) = private.split_last().ok_or(CryptoError::BadKeyLength)?;
                if high.iter().all(|&b| b == 0) && *last < 2 {
                    return Err(CryptoError::BadKeyLength);
                }
                let dh = ModpDh::new_group14(private)?;
                let mut public = [0u8; MODP2048_LEN];
                dh.public_value(&mut public)?;
                (public.to_vec(), Private::Modp(dh))
            }
            DhGroup::Ecp256 | DhGroup::Ecp384 => {
                let (nid, coord_len) = group.curve().ok_or(CryptoError::Backend)?;
                if private.len() != coord_len {
                    return Err(CryptoError::BadKeyLength);
                }
                let mut ctx = BigNumContext::new().map_err(backend)?;
                // Built before the range check so that a rejected scalar is
                // cleared too.
                let ec = EcPrivate {
                    curve: EcGroup::from_curve_name(nid).map_err(backend)?,
                    scalar: BigNum::from_slice(private).map_err(backend)?,
                    coord_len,
                };
                let mut order = BigNum::new().map_err(backend)?;
                ec.curve.order(&mut order, &mut ctx).map_err(backend)?;
                if ec.scalar.num_bits() == 0 || ec.scalar >= order {
                    return Err(CryptoError::BadKeyLength);
                }
                let mut point = EcPoint::new(&ec.curve).map_err(backend)?;
                point
                    .mul_generator(&ec.curve, &ec.scalar, &mut ctx)
                    .map_err(backend)?;
                let public = encode_point(&ec.curve, &point, coord_len, &mut ctx)?;
                (public, Private::Ecp(ec))
            }
            DhGroup::Curve25519 => {
                let bytes: Zeroizing<[u8; 32]> =
                    Zeroizing::new(private.try_into().map_err(|_| CryptoError::BadKeyLength)?);
                let secret = StaticSecret::from(*bytes);
                let public = PublicKey::from(&secret).as_bytes().to_vec();
                (public, Private::X25519(secret))
            }
        };
        debug_assert_eq!(public.len(), group.public_len());
        Ok(KeyPair {
            group,
            public,
            private,
        })
    }

    /// Our public value, `group().public_len()` bytes, in the KE payload
    /// encoding.
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// The group of this key pair.
    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// Computes the shared secret g^ir from the peer's public value, after
    /// validating it:
    ///
    /// - exact length for the group, else [`CryptoError::InvalidPublicValue`];
    /// - MODP: 1 < y < p-1 (RFC 6989 §2.1);
    /// - ECP: the point is on the curve and not the point at infinity
    ///   (RFC 6989 §2.3);
    /// - Curve25519: the result is not all zeros (RFC 8031 §2.3,
    ///   RFC 7748 §6.1).
    ///
    /// Any violation is [`CryptoError::InvalidPublicValue`].
    pub fn agree(&self, peer_public: &[u8]) -> Result<Secret, CryptoError> {
        if peer_public.len() != self.group.public_len() {
            return Err(CryptoError::InvalidPublicValue);
        }
        match &self.private {
            Private::Modp(dh) => {
                let mut out = Zeroizing::new([0u8; MODP2048_LEN]);
                dh.compute_key(peer_public, &mut out)?;
                Ok(Secret::from_slice(&out[..]))
            }
            Private::Ecp(ec) => ecdh(ec, peer_public),
            Private::X25519(secret) => {
                let peer: [u8; 32] = peer_public
                    .try_into()
                    .map_err(|_| CryptoError::InvalidPublicValue)?;
                let shared = secret.diffie_hellman(&PublicKey::from(peer));
                if ct_eq(shared.as_bytes(), &[0u8; 32]) {
                    return Err(CryptoError::InvalidPublicValue);
                }
                Ok(Secret::from_slice(shared.as_bytes()))
            }
        }
    }
}

/// x ‖ y, each left-padded to `coord_len` (RFC 5903 §7).
fn encode_point(
    curve: &EcGroupRef,
    point: &EcPointRef,
    coord_len: usize,
    ctx: &mut BigNumContext,
) -> Result<Vec<u8>, CryptoError> {
    let mut x = BigNum::new().map_err(backend)?;
    let mut y = BigNum::new().map_err(backend)?;
    point
        .affine_coordinates_gfp(curve, &mut x, &mut y, ctx)
        .map_err(backend)?;
    let mut out = x.to_vec_padded(coord_len).map_err(backend)?;
    out.extend_from_slice(&y.to_vec_padded(coord_len).map_err(backend)?);
    Ok(out)
}

/// ECDH per RFC 5903 §7: validate the peer point, multiply by our scalar,
/// keep only the x coordinate.
fn ecdh(ec: &EcPrivate, peer_public: &[u8]) -> Result<Secret, CryptoError> {
    let curve = &ec.curve;
    let mut ctx = BigNumContext::new().map_err(backend)?;

    // RFC 5903 §7 drops SEC1's 0x04 "uncompressed" octet; put it back so
    // BoringSSL can parse (and on-curve check) the point.
    let mut sec1 = [0u8; 1 + 2 * 48];
    let sec1 = &mut sec1[..1 + peer_public.len()];
    sec1[0] = 0x04;
    sec1[1..].copy_from_slice(peer_public);
    let peer =
        EcPoint::from_bytes(curve, sec1, &mut ctx).map_err(|_| CryptoError::InvalidPublicValue)?;
    // Redundant with oct2point's own check, but this is the line that the
    // security of the exchange rests on (invalid-curve attacks), so it is
    // stated here rather than inherited.
    let on_curve = peer.is_on_curve(curve, &mut ctx).map_err(backend)?;
    if !on_curve || peer.is_infinity(curve) {
        return Err(CryptoError::InvalidPublicValue);
    }

    let mut product = EcPoint::new(curve).map_err(backend)?;
    product
        .mul(curve, &peer, &ec.scalar, &mut ctx)
        .map_err(backend)?;
    if product.is_infinity(curve) {
        return Err(CryptoError::InvalidPublicValue);
    }
    let mut x = SecretBn(BigNum::new().map_err(backend)?);
    let mut y = SecretBn(BigNum::new().map_err(backend)?);
    product
        .affine_coordinates_gfp(curve, &mut x.0, &mut y.0, &mut ctx)
        .map_err(backend)?;
    let shared = x.0.to_vec_padded(ec.coord_len).map_err(backend)?;
    Ok(Secret::new(shared))
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SeededRng;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    const ALL: [DhGroup; 4] = [
        DhGroup::Modp2048,
        DhGroup::Ecp256,
        DhGroup::Ecp384,
        DhGroup::Curve25519,
    ];

    /// RFC 3526 §3, the 2048-bit MODP group's prime.
    const MODP2048_P: &str = "
        FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
        29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
        EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
        E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
        EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D
        C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F
        83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D
        670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B
        E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9
        DE2BCBF6 95581718 3995497C EA956AE5 15D22618 98FA0510
        15728E5A 8AACAA68 FFFFFFFF FFFFFFFF";

    #[test]
    fn lengths() {
        let want = [(256, 256), (64, 32), (96, 48), (32, 32)];
        for (g, (public, shared)) in ALL.into_iter().zip(want) {
            assert_eq!(g.public_len(), public, "{g:?}");
            assert_eq!(g.shared_secret_len(), shared, "{g:?}");
        }
    }

    #[test]
    fn generated_pairs_agree_in_every_group() {
        let mut rng = SeededRng::new(1);
        for g in ALL {
            let a = KeyPair::generate(g, &mut rng);
            let b = KeyPair::generate(g, &mut rng);
            assert_eq!(a.group(), g);
            assert_eq!(a.public().len(), g.public_len());
            assert_ne!(a.public(), b.public());
            let ab = a.agree(b.public()).unwrap();
            let ba = b.agree(a.public()).unwrap();
            assert_eq!(ab.len(), g.shared_secret_len(), "{g:?}");
            assert_eq!(ab, ba, "{g:?}");
        }
    }

    #[test]
    fn generation_is_deterministic_under_seeded_rng() {
        for g in ALL {
            let a = KeyPair::generate(g, &mut SeededRng::new(99));
            let b = KeyPair::generate(g, &mut SeededRng::new(99));
            let c = KeyPair::generate(g, &mut SeededRng::new(100));
            assert_eq!(a.public(), b.public(), "{g:?}");
            assert_ne!(a.public(), c.public(), "{g:?}");
        }
    }

    #[test]
    fn wrong_lengths_are_rejected() {
        let mut rng = SeededRng::new(2);
        for g in ALL {
            let a = KeyPair::generate(g, &mut rng);
            let b = KeyPair::generate(g, &mut rng);
            let p = b.public();
            for bad in [&p[..p.len() - 1], &[p, &[0]].concat(), &[]] {
                assert_eq!(a.agree(bad), Err(CryptoError::InvalidPublicValue), "{g:?}");
            }
        }
    }

    // RFC 3526 §3 group 14: the public value is 2^x mod p for the RFC's p,
    // big-endian and left-padded to 256 bytes.
    #[test]
    fn modp_public_value_is_g_to_the_x() {
        let p = BigNum::from_slice(&h(MODP2048_P)).unwrap();
        let mut ctx = BigNumContext::new().unwrap();
        for x in [&[2u8][..], &[0x01, 0x00], &[0x5a; 48], &[0xff; 256]] {
            let pair = KeyPair::from_private(DhGroup::Modp2048, x).unwrap();
            let mut want = BigNum::new().unwrap();
            let g = BigNum::from_u32(2).unwrap();
            let x = BigNum::from_slice(x).unwrap();
            want.mod_exp(&g, &x, &p, &mut ctx).unwrap();
            assert_eq!(pair.public(), &want.to_vec_padded(256).unwrap()[..]);
        }
        // 2^2 = 4: leading zeros are kept.
        let four = KeyPair::from_private(DhGroup::Modp2048, &[2]).unwrap();
        assert_eq!(four.public()[..255], [0u8; 255]);
        assert_eq!(four.public()[255], 4);
    }

    #[test]
    fn modp_rejects_degenerate_private_exponents() {
        for x in [&[][..], &[0], &[1], &[0, 0, 1], &[0; 48]] {
            assert_eq!(
                KeyPair::from_private(DhGroup::Modp2048, x).unwrap_err(),
                CryptoError::BadKeyLength
            );
        }
    }

    // Public values outside 1 < y < p-1 (RFC 6989 §2.1): 0, 1, p-1, p and
    // 2^2048-1.
    #[test]
    fn modp_rejects_bad_public_values() {
        let pair = KeyPair::generate(DhGroup::Modp2048, &mut SeededRng::new(3));
        let p = h(MODP2048_P);
        let mut p_minus_1 = p.clone();
        p_minus_1[255] -= 1;
        let mut one = vec![0u8; 256];
        one[255] = 1;
        for bad in [vec![0u8; 256], one, p_minus_1, p, vec![0xff; 256]] {
            assert_eq!(pair.agree(&bad), Err(CryptoError::InvalidPublicValue));
        }
        // 2 and p-2 are the extremes of the valid range.
        let mut two = vec![0u8; 256];
        two[255] = 2;
        assert!(pair.agree(&two).is_ok());
        let mut p_minus_2 = h(MODP2048_P);
        p_minus_2[255] -= 2;
        assert!(pair.agree(&p_minus_2).is_ok());
    }

    /// One RFC 5903 §8 test vector: i, g^i = (gix, giy), r, g^r, g^ir x.
    struct EcpVector {
        i: &'static str,
        gix: &'static str,
        giy: &'static str,
        r: &'static str,
        grx: &'static str,
        gry: &'static str,
        girx: &'static str,
    }

    fn check_ecp(group: DhGroup, v: &EcpVector) {
        let gi = [h(v.gix), h(v.giy)].concat();
        let gr = [h(v.grx), h(v.gry)].concat();
        let initiator = KeyPair::from_private(group, &h(v.i)).unwrap();
        let responder = KeyPair::from_private(group, &h(v.r)).unwrap();
        // Public values are x | y with no 0x04 prefix (RFC 5903 §7).
        assert_eq!(initiator.public(), &gi[..]);
        assert_eq!(responder.public(), &gr[..]);
        // The shared secret is the x coordinate of g^ir alone.
        assert_eq!(initiator.agree(&gr).unwrap().as_bytes(), &h(v.girx)[..]);
        assert_eq!(responder.agree(&gi).unwrap().as_bytes(), &h(v.girx)[..]);

        // A point off the curve (y flipped in its last bit) is rejected.
        let mut off = gr.clone();
        *off.last_mut().unwrap() ^= 1;
        assert_eq!(initiator.agree(&off), Err(CryptoError::InvalidPublicValue));
        // So is (0, 0), and a point with the 0x04 prefix left on.
        assert_eq!(
            initiator.agree(&vec![0; gr.len()]),
            Err(CryptoError::InvalidPublicValue)
        );
        let with_prefix = [&[0x04], &gr[..gr.len() - 1]].concat();
        assert_eq!(
            initiator.agree(&with_prefix),
            Err(CryptoError::InvalidPublicValue)
        );
    }

    // RFC 5903 §8.1, 256-bit random ECP group.
    #[test]
    fn rfc5903_8_1_ecp256() {
        check_ecp(
            DhGroup::Ecp256,
            &EcpVector {
                i: "C88F01F5 10D9AC3F 70A292DA A2316DE5 44E9AAB8 AFE84049 C62A9C57 862D1433",
                gix: "DAD0B653 94221CF9 B051E1FE CA5787D0 98DFE637 FC90B9EF 945D0C37 72581180",
                giy: "5271A046 1CDB8252 D61F1C45 6FA3E59A B1F45B33 ACCF5F58 389E0577 B8990BB3",
                r: "C6EF9C5D 78AE012A 011164AC B397CE20 88685D8F 06BF9BE0 B283AB46 476BEE53",
                grx: "D12DFB52 89C8D4F8 1208B702 70398C34 2296970A 0BCCB74C 736FC755 4494BF63",
                gry: "56FBF3CA 366CC23E 8157854C 13C58D6A AC23F046 ADA30F83 53E74F33 039872AB",
                girx: "D6840F6B 42F6EDAF D13116E0 E1256520 2FEF8E9E CE7DCE03 812464D0 4B9442DE",
            },
        );
    }

    // RFC 5903 §8.2, 384-bit random ECP group.
    #[test]
    fn rfc5903_8_2_ecp384() {
        check_ecp(
            DhGroup::Ecp384,
            &EcpVector {
                i: "099F3C70 34D4A2C6 99884D73 A375A67F 7624EF7C 6B3C0F16 0647B674 14DCE655
                    E35B5380 41E649EE 3FAEF896 783AB194",
                gix: "667842D7 D180AC2C DE6F74F3 7551F557 55C7645C 20EF73E3 1634FE72 B4C55EE6
                      DE3AC808 ACB4BDB4 C88732AE E95F41AA",
                giy: "9482ED1F C0EEB9CA FC498462 5CCFC23F 65032149 E0E144AD A0241815 35A0F38E
                      EB9FCFF3 C2C947DA E69B4C63 4573A81C",
                r: "41CB0779 B4BDB85D 47846725 FBEC3C94 30FAB46C C8DC5060 855CC9BD A0AA2942
                    E0308312 916B8ED2 960E4BD5 5A7448FC",
                grx: "E558DBEF 53EECDE3 D3FCCFC1 AEA08A89 A987475D 12FD950D 83CFA417 32BC509D
                      0D1AC43A 0336DEF9 6FDA41D0 774A3571",
                gry: "DCFBEC7A ACF31964 72169E83 8430367F 66EEBE3C 6E70C416 DD5F0C68 759DD1FF
                      F83FA401 42209DFF 5EAAD96D B9E6386C",
                girx: "11187331 C279962D 93D60424 3FD592CB 9D0A926F 422E4718 7521287E 7156C5C4
                       D6031355 69B9E9D0 9CF5D4A2 70F59746",
            },
        );
    }

    #[test]
    fn ecp_rejects_out_of_range_scalars() {
        // 0 and the P-256 group order n are outside [1, n-1].
        let n = h("FFFFFFFF 00000000 FFFFFFFF FFFFFFFF BCE6FAAD A7179E84 F3B9CAC2 FC632551");
        for bad in [vec![0u8; 32], n, vec![0xff; 32], vec![1u8; 31]] {
            assert_eq!(
                KeyPair::from_private(DhGroup::Ecp256, &bad).unwrap_err(),
                CryptoError::BadKeyLength
            );
        }
        let mut n_minus_1 =
            h("FFFFFFFF 00000000 FFFFFFFF FFFFFFFF BCE6FAAD A7179E84 F3B9CAC2 FC632550");
        assert!(KeyPair::from_private(DhGroup::Ecp256, &n_minus_1).is_ok());
        n_minus_1.fill(0);
        n_minus_1[31] = 1;
        // Scalar 1: the public value is the generator itself.
        let one = KeyPair::from_private(DhGroup::Ecp256, &n_minus_1).unwrap();
        assert_eq!(
            &one.public()[..32],
            &h("6B17D1F2 E12C4247 F8BCE6E5 63A440F2 77037D81 2DEB33A0 F4A13945 D898C296")[..]
        );
    }

    /// An Rng whose first draws are all 0xff (out of range for P-256) —
    /// generation must redraw, not fail.
    struct FfThenSeeded(usize, SeededRng);

    impl Rng for FfThenSeeded {
        fn fill(&mut self, buf: &mut [u8]) {
            if self.0 > 0 {
                self.0 -= 1;
                buf.fill(0xff);
            } else {
                self.1.fill(buf);
            }
        }
    }

    #[test]
    fn ecp_generation_redraws_out_of_range_scalars() {
        let mut rng = FfThenSeeded(3, SeededRng::new(5));
        let pair = KeyPair::generate(DhGroup::Ecp256, &mut rng);
        assert_eq!(rng.0, 0);
        let direct = KeyPair::generate(DhGroup::Ecp256, &mut SeededRng::new(5));
        assert_eq!(pair.public(), direct.public());
    }

    #[test]
    #[should_panic(expected = "out-of-range")]
    fn broken_rng_is_detected() {
        let mut rng = FfThenSeeded(usize::MAX, SeededRng::new(0));
        let _ = KeyPair::generate(DhGroup::Ecp256, &mut rng);
    }

    // RFC 7748 §6.1: Alice's and Bob's keys and their shared secret.
    #[test]
    fn rfc7748_6_1_x25519() {
        let alice = KeyPair::from_private(
            DhGroup::Curve25519,
            &h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"),
        )
        .unwrap();
        let bob = KeyPair::from_private(
            DhGroup::Curve25519,
            &h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"),
        )
        .unwrap();
        assert_eq!(
            alice.public(),
            &h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")[..]
        );
        assert_eq!(
            bob.public(),
            &h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")[..]
        );
        let k = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(alice.agree(bob.public()).unwrap().as_bytes(), &k[..]);
        assert_eq!(bob.agree(alice.public()).unwrap().as_bytes(), &k[..]);
    }

    // RFC 8031 §2.3 / RFC 7748 §6.1: low-order points give an all-zero
    // secret, which must be refused. u = 0 and u = 1 are two of them.
    #[test]
    fn x25519_rejects_all_zero_secret() {
        let pair = KeyPair::generate(DhGroup::Curve25519, &mut SeededRng::new(4));
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(pair.agree(&[0; 32]), Err(CryptoError::InvalidPublicValue));
        assert_eq!(pair.agree(&one), Err(CryptoError::InvalidPublicValue));
    }

    #[test]
    fn debug_is_redacted_and_type_is_shareable() {
        fn check<T: Send + Sync>() {}
        check::<KeyPair>();
        let pair = KeyPair::from_private(DhGroup::Curve25519, &[0x11; 32]).unwrap();
        assert_eq!(format!("{pair:?}"), "KeyPair { group: Curve25519, .. }");
    }
}
