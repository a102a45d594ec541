//! anyhub's IKEv2 (RFC 7296), sans-IO.
//!
//! - [`wire`]: the codec for every payload of RFC 7296 §3 (and SKF, RFC 7383).
//! - [`Endpoint`]: one object that owns every IKE SA of a node, fed with
//!   datagrams and `now`, polled for datagrams to send, the next timeout and
//!   events (the quinn contract). It installs nothing: established child SAs
//!   leave as [`Event`]s carrying their keys as data.
//! - [`config`], [`identity`], [`proposal`], [`ts`]: what a tunnel is, in
//!   strongSwan's vocabulary, and how offers are matched against it.
//! - [`spi`]: SPIs that carry the allocating node's index.
//! - [`takeover`]: the state another node needs to take an established IKE
//!   SA over ([`Endpoint::export_ike_sa`], [`Endpoint::adopt_ike_sa`]).
//! - [`auth`]: IKE_AUTH with pre-shared keys or certificates (RFC 7427
//!   signatures, CERT/CERTREQ, chain validation, IDs from certificates).

pub mod auth;
pub mod config;
mod endpoint;
pub mod event;
pub mod identity;
mod keys;
pub mod proposal;
mod sk;
pub mod spi;
pub mod takeover;
pub mod ts;
pub mod wire;

pub use auth::{PubkeyAuth, PubkeyError, TunnelAuth};
pub use config::{EndpointConfig, RetransmitConfig, TunnelConfig, WallClock, MAX_NODE_INDEX};
/// Hooks for the fuzz targets only (cargo feature `fuzzing`, enabled by
/// `fuzz/`; see docs/testing.md).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use endpoint::fuzzing;
pub use endpoint::{nat_detection_hash, Counters, Endpoint, InitiateError, MAX_HALF_OPEN};
pub use event::{
    ChildSa, DirectionKeys, Event, IkeSaHandle, IkeSaInfo, IkeState, SaEndReason, Transmit,
};
pub use identity::Identity;
pub use proposal::{ProposalSpec, Selected};
pub use takeover::{AdoptError, IkeSaState};
