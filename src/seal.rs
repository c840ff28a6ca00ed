//! Compression and encryption at rest: what a [`Cache`](crate::Cache) does to an encoded
//! [`Entry`] between it and the store.
//!
//! Both are cargo features, off by default, and configured per `Cache`:
//!
//! - **`compression`**: [`CacheBuilder::compression`] stores
//!   entries whose encoding is at least [`Compression::threshold`] bytes LZ4-compressed (kept as
//!   they are when compression does not shrink them, as with images or already-compressed
//!   bodies), and decompresses them on read, never past [`Compression::max_size`].
//! - **`encryption`**: [`CacheBuilder::encryption`] seals every
//!   entry with AES-256-GCM under the current key of a [`Keyring`]; older keys of the ring still
//!   open the entries they sealed (rotation). An entry that does not authenticate (tampered,
//!   truncated, sealed under a key the ring does not hold, copied from another key, or not
//!   encrypted at all) is a **miss**, handled exactly like an undecodable entry: counted in
//!   [`Stats::decode_failures`](crate::Stats) by routes and `get_or_set`, logged, never served,
//!   never an error response, and overwritten by the next fill.
//!
//! Every path that reads or writes entries goes through the same pair of functions on the
//! `Cache` (route reads and fills, `get_or_set`, `get`/`set`, batch reads and writes, warming,
//! routes with eviction), so no call site can store an entry unsealed.
//!
//! ```
//! # #[cfg(all(feature = "compression", feature = "encryption"))]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tower_valkey_cache::seal::{Compression, Keyring};
//! use tower_valkey_cache::{Cache, MemoryStore};
//!
//! let shared = Cache::new(MemoryStore::new()).store().clone();
//! // The application's keys (32 bytes each), from its secret store; id 2 is current, entries
//! // sealed under id 1 still open until it leaves the ring.
//! let (k1, k2) = ([1u8; 32], [2u8; 32]);
//! let sensitive = Cache::builder_shared(shared)
//!     .namespace("accounts")
//!     .compression(Compression::lz4().threshold(1024))
//!     .encryption(Keyring::new(2, &k2)?.with_old_key(1, &k1)?)
//!     .build();
//! # Ok(()) }
//! # #[cfg(not(all(feature = "compression", feature = "encryption")))]
//! # fn main() {}
//! ```
//!
//! # One sensitive route
//!
//! The transform belongs to the `Cache`, like the namespace and the L1 tier, so that every
//! operation on a namespace agrees on it (an invalidation or a `get` from a worker must read what
//! a route wrote). To encrypt one route's entries only, give that route a `Cache` of its own
//! namespace, sharing the store ([`Cache::builder_shared`](crate::Cache::builder_shared)), as
//! above: same connections, its own keys and keyring.
//!
//! Every instance sharing a namespace should use the same configuration. Reads accept what other
//! configurations wrote where they safely can (a cache built with the `compression` feature but
//! without [`CacheBuilder::compression`](crate::CacheBuilder) still decompresses), but an instance built without a feature, or without the keyring, reads sealed
//! entries as misses and overwrites them, and an instance with a keyring refuses unencrypted
//! entries: correct, but the instances then overwrite each other's entries.
//!
//! # Decompression is bounded
//!
//! The store is not trusted to hold well-formed data. Before allocating, the declared decoded
//! length must be at most [`Compression::max_size`] (default 16 MiB) and at most what an LZ4 block
//! of that size can expand to (255 bytes per input byte); the block must then decode to exactly
//! that length. Anything else is a miss. Entries larger than `max_size` are stored uncompressed,
//! so a cache never writes an entry it would refuse to read.
//!
//! # L1
//!
//! The [L1 tier](crate::l1) keeps entries **opened** (decrypted and decompressed): an L1 hit
//! decodes the plain entry, as without this module, and pays neither cost. L1 is process memory,
//! which holds the served responses anyway; its capacity counts entries, not bytes, so size it
//! for uncompressed entries.
//!
//! Design records (the envelope format, why LZ4 and why `ring`): ARCHITECTURE.md › Entries at rest.
//!
// Links to items that exist only with a feature: to the item when it is built, otherwise to its
// page on docs.rs (built with every feature), so the docs of every feature set have no broken
// link.
#![cfg_attr(feature = "unstable", doc = "[`Entry`]: crate::entry::Entry")]
#![cfg_attr(
    not(feature = "unstable"),
    doc = "[`Entry`]: https://docs.rs/tower-valkey-cache/latest/tower_valkey_cache/entry/struct.Entry.html"
)]
#![cfg_attr(
    feature = "compression",
    doc = "[`CacheBuilder::compression`]: crate::CacheBuilder::compression",
    doc = "[`Compression::threshold`]: Compression::threshold",
    doc = "[`Compression::max_size`]: Compression::max_size"
)]
#![cfg_attr(
    not(feature = "compression"),
    doc = "[`CacheBuilder::compression`]: https://docs.rs/tower-valkey-cache/latest/tower_valkey_cache/struct.CacheBuilder.html#method.compression",
    doc = "[`Compression::threshold`]: https://docs.rs/tower-valkey-cache/latest/tower_valkey_cache/seal/struct.Compression.html#method.threshold",
    doc = "[`Compression::max_size`]: https://docs.rs/tower-valkey-cache/latest/tower_valkey_cache/seal/struct.Compression.html#method.max_size"
)]
#![cfg_attr(
    feature = "encryption",
    doc = "[`CacheBuilder::encryption`]: crate::CacheBuilder::encryption",
    doc = "[`Keyring`]: Keyring"
)]
#![cfg_attr(
    not(feature = "encryption"),
    doc = "[`CacheBuilder::encryption`]: https://docs.rs/tower-valkey-cache/latest/tower_valkey_cache/struct.CacheBuilder.html#method.encryption",
    doc = "[`Keyring`]: https://docs.rs/tower-valkey-cache/latest/tower_valkey_cache/seal/struct.Keyring.html"
)]

use crate::entry::DecodeError;
use crate::store::KeySpace;
use bytes::Bytes;

/// The envelope's magic and version.
const ENVELOPE: &[u8; 4] = b"TVC\x02";
const FLAG_LZ4: u8 = 0x01;
const FLAG_AES: u8 = 0x02;
const KNOWN_FLAGS: u8 = FLAG_LZ4 | FLAG_AES;
#[cfg(feature = "compression")]
const DEFAULT_MAX_SIZE: usize = 16 << 20;

/// Compression of stored entries (feature `compression`): LZ4 above a size threshold. See the
/// [module docs](self).
#[cfg(feature = "compression")]
#[cfg_attr(docsrs, doc(cfg(feature = "compression")))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compression {
    threshold: usize,
    max_size: usize,
}

#[cfg(feature = "compression")]
impl Compression {
    /// LZ4 (block format), for entries of at least 1 KiB, decoded up to 16 MiB.
    pub fn lz4() -> Self {
        Self {
            threshold: 1024,
            max_size: DEFAULT_MAX_SIZE,
        }
    }

    /// Entries whose encoding (headers and body) is shorter than `bytes` are stored as they
    /// are. Default 1 KiB: below that, the saving is a few hundred bytes at most.
    pub fn threshold(mut self, bytes: usize) -> Self {
        self.threshold = bytes;
        self
    }

    /// The largest decoded entry a read accepts (a stored value declaring more is a miss, and
    /// nothing is allocated for it); larger entries are stored uncompressed. Default 16 MiB.
    pub fn max_size(mut self, bytes: usize) -> Self {
        self.max_size = bytes.min(u32::MAX as usize);
        self
    }
}

#[cfg(feature = "compression")]
impl Default for Compression {
    fn default() -> Self {
        Self::lz4()
    }
}

/// The application's encryption keys (feature `encryption`): one current key that seals new
/// entries, and older keys that still open the entries they sealed. See the
/// [module docs](self).
///
/// Rotation: add the new key as current and keep the previous one as old
/// ([`with_old_key`](Self::with_old_key)) for at least the longest entry lifetime (TTL plus
/// stale windows); then drop it. Entries sealed under a key that left the ring are misses.
///
/// `Debug` prints the key ids only, never key material.
#[cfg(feature = "encryption")]
#[cfg_attr(docsrs, doc(cfg(feature = "encryption")))]
#[derive(Clone)]
pub struct Keyring {
    current: SecretKey,
    old: Vec<SecretKey>,
    rng: ring::rand::SystemRandom,
}

#[cfg(feature = "encryption")]
#[derive(Clone)]
struct SecretKey {
    id: u32,
    key: std::sync::Arc<ring::aead::LessSafeKey>,
}

/// Why a [`Keyring`] could not be built.
#[cfg(feature = "encryption")]
#[cfg_attr(docsrs, doc(cfg(feature = "encryption")))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// AES-256 keys are 32 bytes; the key had this many.
    Length(usize),
    /// Two keys of the ring share this id.
    DuplicateId(u32),
}

#[cfg(feature = "encryption")]
impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::Length(n) => write!(f, "encryption keys are 32 bytes, not {n}"),
            KeyError::DuplicateId(id) => write!(f, "two keys of the keyring have id {id}"),
        }
    }
}

#[cfg(feature = "encryption")]
impl std::error::Error for KeyError {}

#[cfg(feature = "encryption")]
impl SecretKey {
    fn new(id: u32, key: &[u8]) -> Result<Self, KeyError> {
        if key.len() != 32 {
            return Err(KeyError::Length(key.len()));
        }
        let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key)
            .map_err(|_| KeyError::Length(key.len()))?;
        Ok(Self {
            id,
            key: std::sync::Arc::new(ring::aead::LessSafeKey::new(unbound)),
        })
    }
}

#[cfg(feature = "encryption")]
impl Keyring {
    /// A keyring whose current key is `key` (32 bytes), named `id` in every entry it seals.
    pub fn new(id: u32, key: &[u8]) -> Result<Self, KeyError> {
        Ok(Self {
            current: SecretKey::new(id, key)?,
            old: Vec::new(),
            rng: ring::rand::SystemRandom::new(),
        })
    }

    /// Adds a previous key: it no longer seals, but still opens the entries it sealed.
    pub fn with_old_key(mut self, id: u32, key: &[u8]) -> Result<Self, KeyError> {
        if self.ids().any(|k| k == id) {
            return Err(KeyError::DuplicateId(id));
        }
        self.old.push(SecretKey::new(id, key)?);
        Ok(self)
    }

    /// The id of the key that seals new entries.
    pub fn current_id(&self) -> u32 {
        self.current.id
    }

    fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        std::iter::once(self.current.id).chain(self.old.iter().map(|k| k.id))
    }

    fn find(&self, id: u32) -> Option<&ring::aead::LessSafeKey> {
        std::iter::once(&self.current)
            .chain(&self.old)
            .find(|k| k.id == id)
            .map(|k| &*k.key)
    }
}

#[cfg(feature = "encryption")]
impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.id)
            .field("old", &self.old.iter().map(|k| k.id).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What a cache does to encoded entries on their way to and from the store.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sealer {
    #[cfg(feature = "compression")]
    pub(crate) compression: Option<Compression>,
    #[cfg(feature = "encryption")]
    pub(crate) keyring: Option<Keyring>,
}

impl Sealer {
    /// The stored form of an encoded entry under `key` (relative to `space`'s namespace).
    #[cfg_attr(not(feature = "encryption"), allow(unused_variables))]
    pub(crate) fn seal(
        &self,
        space: &KeySpace,
        key: &str,
        plain: Bytes,
    ) -> Result<Bytes, DecodeError> {
        #[cfg(feature = "encryption")]
        let keyring = self.keyring.as_ref();
        #[cfg(not(feature = "encryption"))]
        let keyring: Option<&()> = None;
        #[cfg(feature = "compression")]
        let packed = self
            .compression
            .as_ref()
            .filter(|c| plain.len() >= c.threshold && plain.len() <= c.max_size)
            .and_then(|_| deflate(&plain));
        #[cfg(not(feature = "compression"))]
        let packed: Option<Vec<u8>> = None;
        if packed.is_none() && keyring.is_none() {
            return Ok(plain);
        }
        let payload: &[u8] = packed.as_deref().unwrap_or(&plain);
        let flags = if packed.is_some() { FLAG_LZ4 } else { 0 };
        match keyring {
            #[cfg(feature = "encryption")]
            Some(ring) => encrypt(ring, space, key, flags, payload),
            _ => {
                let mut out = Vec::with_capacity(5 + payload.len());
                out.extend_from_slice(ENVELOPE);
                out.push(flags);
                out.extend_from_slice(payload);
                Ok(out.into())
            }
        }
    }

    /// The encoded entry from its stored form, or why it must be treated as a miss.
    #[cfg_attr(not(feature = "encryption"), allow(unused_variables))]
    pub(crate) fn open(
        &self,
        space: &KeySpace,
        key: &str,
        raw: Bytes,
    ) -> Result<Bytes, DecodeError> {
        #[cfg(feature = "encryption")]
        let required = self.keyring.is_some();
        #[cfg(not(feature = "encryption"))]
        let required = false;
        if !raw.starts_with(ENVELOPE) {
            if required {
                return Err(DecodeError::new("unencrypted entry in an encrypted cache"));
            }
            // A plain entry (or foreign data, which the entry decoder rejects).
            return Ok(raw);
        }
        let flags = *raw.get(4).ok_or(DecodeError::new("truncated envelope"))?;
        if flags == 0 || flags & !KNOWN_FLAGS != 0 {
            return Err(DecodeError::new("unknown envelope flags"));
        }
        let payload = if flags & FLAG_AES != 0 {
            #[cfg(feature = "encryption")]
            match &self.keyring {
                Some(ring) => decrypt(ring, space, key, &raw)?,
                None => {
                    return Err(DecodeError::new(
                        "encrypted entry; the cache has no keyring",
                    ))
                }
            }
            #[cfg(not(feature = "encryption"))]
            return Err(DecodeError::new(
                "encrypted entry; the `encryption` feature is off",
            ));
        } else if required {
            return Err(DecodeError::new("unencrypted entry in an encrypted cache"));
        } else {
            raw.slice(5..)
        };
        if flags & FLAG_LZ4 != 0 {
            #[cfg(feature = "compression")]
            return inflate(&payload, self.max_size());
            #[cfg(not(feature = "compression"))]
            return Err(DecodeError::new(
                "compressed entry; the `compression` feature is off",
            ));
        }
        Ok(payload)
    }

    #[cfg(feature = "compression")]
    fn max_size(&self) -> usize {
        self.compression
            .as_ref()
            .map_or(DEFAULT_MAX_SIZE, |c| c.max_size)
    }
}

/// `u32 length` + LZ4 block, if that is shorter than `plain`.
#[cfg(feature = "compression")]
fn deflate(plain: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0u8; 4 + lz4_flex::block::get_maximum_output_size(plain.len())];
    out[..4].copy_from_slice(&(plain.len() as u32).to_be_bytes());
    let n = lz4_flex::block::compress_into(plain, &mut out[4..]).ok()?;
    // The envelope header costs 5 more bytes: keep the entry plain unless it saves more.
    if 4 + n + 5 >= plain.len() {
        return None;
    }
    out.truncate(4 + n);
    Some(out)
}

/// Decodes `u32 length` + LZ4 block, refusing (before allocating) a declared length above
/// `max_size` or above what the block could expand to.
#[cfg(feature = "compression")]
fn inflate(payload: &[u8], max_size: usize) -> Result<Bytes, DecodeError> {
    let (len, block) = payload
        .split_first_chunk::<4>()
        .ok_or(DecodeError::new("truncated compressed entry"))?;
    let len = u32::from_be_bytes(*len) as usize;
    if len > max_size {
        return Err(DecodeError::new(
            "compressed entry declares a size above the limit",
        ));
    }
    // An LZ4 sequence expands to at most 255 bytes per input byte (plus a constant).
    if len > block.len().saturating_mul(255).saturating_add(64) {
        return Err(DecodeError::new(
            "compressed entry declares more than its block can hold",
        ));
    }
    let mut out = vec![0u8; len];
    match lz4_flex::block::decompress_into(block, &mut out) {
        Ok(n) if n == len => Ok(out.into()),
        _ => Err(DecodeError::new("compressed entry does not decompress")),
    }
}

#[cfg(feature = "encryption")]
const HEADER_LEN: usize = 4 + 1 + 4;
#[cfg(feature = "encryption")]
const NONCE_LEN: usize = ring::aead::NONCE_LEN;

/// The associated data: the envelope header (magic, flags, key id) and the store key.
#[cfg(feature = "encryption")]
fn associated_data(header: &[u8], space: &KeySpace, key: &str) -> Vec<u8> {
    let prefix = space.shard_for(key).entry_prefix().as_bytes();
    let mut aad = Vec::with_capacity(header.len() + prefix.len() + key.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(prefix);
    aad.extend_from_slice(key.as_bytes());
    aad
}

#[cfg(feature = "encryption")]
fn encrypt(
    ring: &Keyring,
    space: &KeySpace,
    key: &str,
    flags: u8,
    payload: &[u8],
) -> Result<Bytes, DecodeError> {
    use ring::rand::SecureRandom;
    let tag_len = ring::aead::AES_256_GCM.tag_len();
    let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + payload.len() + tag_len);
    out.extend_from_slice(ENVELOPE);
    out.push(flags | FLAG_AES);
    out.extend_from_slice(&ring.current.id.to_be_bytes());
    let mut nonce = [0u8; NONCE_LEN];
    ring.rng
        .fill(&mut nonce)
        .map_err(|_| DecodeError::new("no randomness for a nonce"))?;
    out.extend_from_slice(&nonce);
    let aad = associated_data(&out[..HEADER_LEN], space, key);
    let start = out.len();
    out.extend_from_slice(payload);
    let tag = ring
        .current
        .key
        .seal_in_place_separate_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(&aad[..]),
            &mut out[start..],
        )
        .map_err(|_| DecodeError::new("entry too large to encrypt"))?;
    out.extend_from_slice(tag.as_ref());
    Ok(out.into())
}

#[cfg(feature = "encryption")]
fn decrypt(ring: &Keyring, space: &KeySpace, key: &str, raw: &[u8]) -> Result<Bytes, DecodeError> {
    let tag_len = ring::aead::AES_256_GCM.tag_len();
    if raw.len() < HEADER_LEN + NONCE_LEN + tag_len {
        return Err(DecodeError::new("truncated encrypted entry"));
    }
    let id = u32::from_be_bytes([raw[5], raw[6], raw[7], raw[8]]);
    let sealing = ring.find(id).ok_or(DecodeError::new(
        "entry sealed under a key not in the keyring",
    ))?;
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&raw[HEADER_LEN..HEADER_LEN + NONCE_LEN]);
    let aad = associated_data(&raw[..HEADER_LEN], space, key);
    let mut buf = raw[HEADER_LEN + NONCE_LEN..].to_vec();
    let n = sealing
        .open_in_place(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(&aad[..]),
            &mut buf,
        )
        .map_err(|_| DecodeError::new("entry does not authenticate"))?
        .len();
    buf.truncate(n);
    Ok(buf.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn space() -> KeySpace {
        KeySpace::new("ns", Duration::from_secs(60))
    }

    fn entry(body: Vec<u8>) -> Bytes {
        crate::entry::Entry::new(
            200,
            Vec::new(),
            body.into(),
            1_000,
            Duration::from_secs(60),
            Duration::ZERO,
        )
        .encode()
        .unwrap()
    }

    fn noise(n: usize) -> Vec<u8> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

    fn json(n: usize) -> Vec<u8> {
        let mut s = String::from("[");
        let mut i = 0;
        while s.len() < n {
            s.push_str(&format!(
                "{{\"id\":{i},\"name\":\"item {i}\",\"ok\":true}},"
            ));
            i += 1;
        }
        s.truncate(n);
        s.into_bytes()
    }

    fn bodies() -> Vec<Vec<u8>> {
        vec![Vec::new(), vec![b'x'], json(1 << 20), noise(1 << 20)]
    }

    #[test]
    fn without_configuration_entries_pass_through() {
        let s = Sealer::default();
        for body in bodies() {
            let plain = entry(body);
            let sealed = s.seal(&space(), "k", plain.clone()).unwrap();
            assert_eq!(sealed, plain);
            assert_eq!(s.open(&space(), "k", sealed).unwrap(), plain);
        }
    }

    #[cfg(feature = "compression")]
    mod compression {
        use super::*;

        fn sealer() -> Sealer {
            Sealer {
                compression: Some(Compression::lz4().threshold(64)),
                ..Default::default()
            }
        }

        #[test]
        fn round_trips_0_1_1mib_and_incompressible_bodies() {
            let s = sealer();
            for body in bodies() {
                let plain = entry(body.clone());
                let sealed = s.seal(&space(), "k", plain.clone()).unwrap();
                assert_eq!(s.open(&space(), "k", sealed.clone()).unwrap(), plain);
                let compressed = sealed.starts_with(ENVELOPE);
                let compressible = body.len() > 1000 && body[0] == b'[';
                assert_eq!(compressed, compressible, "body of {} bytes", body.len());
                if compressed {
                    assert!(sealed.len() * 4 < plain.len(), "JSON shrinks");
                }
            }
        }

        #[test]
        fn below_the_threshold_and_above_max_size_stays_plain() {
            let plain = entry(json(2000));
            let s = Sealer {
                compression: Some(Compression::lz4().threshold(plain.len() + 1)),
                ..Default::default()
            };
            assert_eq!(s.seal(&space(), "k", plain.clone()).unwrap(), plain);
            let s = Sealer {
                compression: Some(Compression::lz4().threshold(0).max_size(100)),
                ..Default::default()
            };
            assert_eq!(s.seal(&space(), "k", plain.clone()).unwrap(), plain);
        }

        fn hostile(declared: u32, block: &[u8]) -> Bytes {
            let mut v = ENVELOPE.to_vec();
            v.push(FLAG_LZ4);
            v.extend_from_slice(&declared.to_be_bytes());
            v.extend_from_slice(block);
            v.into()
        }

        #[test]
        fn a_declared_length_beyond_the_limit_or_the_block_is_refused_before_allocating() {
            let s = sealer();
            // 4 GiB declared: above max_size.
            let e = s.open(&space(), "k", hostile(u32::MAX, &[0; 16]));
            assert_eq!(
                e,
                Err(DecodeError::new(
                    "compressed entry declares a size above the limit"
                ))
            );
            // 1 MiB declared from 16 bytes: below max_size, but no LZ4 block expands that much.
            let e = s.open(&space(), "k", hostile(1 << 20, &[0; 16]));
            assert_eq!(
                e,
                Err(DecodeError::new(
                    "compressed entry declares more than its block can hold"
                ))
            );
        }

        #[test]
        fn lying_lengths_garbage_and_unknown_flags_are_errors() {
            let s = sealer();
            let plain = entry(json(10_000));
            let sealed = s.seal(&space(), "k", plain).unwrap();
            let declared = u32::from_be_bytes([sealed[5], sealed[6], sealed[7], sealed[8]]);
            for lie in [declared - 1, declared + 1] {
                let mut v = sealed.to_vec();
                v[5..9].copy_from_slice(&lie.to_be_bytes());
                assert!(s.open(&space(), "k", v.into()).is_err(), "length {lie}");
            }
            // Prefixes too short to be envelopes go to the entry decoder, which refuses them too.
            for n in 0..sealed.len() {
                let opened = s.open(&space(), "k", sealed.slice(..n));
                assert!(
                    opened
                        .and_then(|b| crate::entry::Entry::decode(&b))
                        .is_err(),
                    "prefix {n}"
                );
            }
            assert!(s.open(&space(), "k", hostile(100, &noise(90))).is_err());
            for flags in [0u8, 0x04, 0x80] {
                let mut v = sealed.to_vec();
                v[4] = flags;
                assert!(s.open(&space(), "k", v.into()).is_err(), "flags {flags}");
            }
        }
    }

    #[cfg(all(feature = "compression", feature = "encryption"))]
    mod arbitrary {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever a hostile writer stores behind the envelope magic: opening never
            /// panics, decompression never yields more than the declared (bounded) length, and
            /// nothing opens under a keyring.
            #[test]
            fn arbitrary_envelopes_never_panic_and_never_authenticate(
                flags in 0u8..=4,
                declared in 0u32..200_000,
                block in proptest::collection::vec(any::<u8>(), 0..4096),
            ) {
                let mut raw = ENVELOPE.to_vec();
                raw.push(flags);
                raw.extend_from_slice(&declared.to_be_bytes());
                raw.extend_from_slice(&block);
                let raw = Bytes::from(raw);
                let unkeyed = Sealer {
                    compression: Some(Compression::lz4()),
                    keyring: None,
                };
                if let Ok(plain) = unkeyed.open(&space(), "k", raw.clone()) {
                    prop_assert!(plain.len() <= declared as usize + block.len());
                    let _ = crate::entry::Entry::decode(&plain);
                }
                let keyed = Sealer {
                    compression: Some(Compression::lz4()),
                    keyring: Some(Keyring::new(0, &[0; 32]).unwrap()),
                };
                prop_assert!(keyed.open(&space(), "k", raw).is_err());
            }
        }
    }

    #[cfg(feature = "encryption")]
    mod encryption {
        use super::*;

        const A: [u8; 32] = [0xa; 32];
        const B: [u8; 32] = [0xb; 32];

        fn sealer(ring: Keyring) -> Sealer {
            Sealer {
                keyring: Some(ring),
                ..Default::default()
            }
        }

        #[test]
        fn round_trips_with_random_nonces() {
            let s = sealer(Keyring::new(1, &A).unwrap());
            for body in bodies() {
                let plain = entry(body);
                let one = s.seal(&space(), "k", plain.clone()).unwrap();
                let two = s.seal(&space(), "k", plain.clone()).unwrap();
                assert_ne!(one, two, "a fresh nonce per entry");
                assert_eq!(s.open(&space(), "k", one).unwrap(), plain);
                assert_eq!(s.open(&space(), "k", two).unwrap(), plain);
            }
        }

        #[test]
        fn every_flipped_bit_and_truncation_fails_to_authenticate() {
            let s = sealer(Keyring::new(1, &A).unwrap());
            let sealed = s.seal(&space(), "k", entry(b"secret".to_vec())).unwrap();
            for i in 0..sealed.len() {
                let mut v = sealed.to_vec();
                v[i] ^= 0x01;
                assert!(s.open(&space(), "k", v.into()).is_err(), "byte {i}");
            }
            // Even prefixes too short to be envelopes: an encrypted cache wants an envelope.
            for n in 0..sealed.len() {
                assert!(
                    s.open(&space(), "k", sealed.slice(..n)).is_err(),
                    "prefix {n}"
                );
            }
        }

        #[test]
        fn another_key_another_namespace_a_wrong_key_or_plaintext_is_refused() {
            let s = sealer(Keyring::new(1, &A).unwrap());
            let plain = entry(b"alice's data".to_vec());
            let sealed = s.seal(&space(), "user:alice", plain.clone()).unwrap();
            assert!(s.open(&space(), "user:bob", sealed.clone()).is_err());
            let other = KeySpace::new("ns2", Duration::from_secs(60));
            assert!(s.open(&other, "user:alice", sealed.clone()).is_err());
            let wrong = sealer(Keyring::new(1, &B).unwrap());
            assert!(wrong.open(&space(), "user:alice", sealed.clone()).is_err());
            assert!(s.open(&space(), "user:alice", plain).is_err());
            // And a cache without a keyring does not serve it either.
            assert!(Sealer::default()
                .open(&space(), "user:alice", sealed)
                .is_err());
        }

        #[test]
        fn rotation_keeps_old_entries_readable_until_the_key_leaves() {
            let old = sealer(Keyring::new(1, &A).unwrap());
            let plain = entry(b"v".to_vec());
            let sealed = old.seal(&space(), "k", plain.clone()).unwrap();
            let rotated = sealer(Keyring::new(2, &B).unwrap().with_old_key(1, &A).unwrap());
            assert_eq!(rotated.open(&space(), "k", sealed.clone()).unwrap(), plain);
            let resealed = rotated.seal(&space(), "k", plain.clone()).unwrap();
            assert_eq!(&resealed[5..9], &2u32.to_be_bytes(), "new entries use B");
            let dropped = sealer(Keyring::new(2, &B).unwrap());
            assert!(dropped.open(&space(), "k", sealed).is_err());
            assert_eq!(dropped.open(&space(), "k", resealed).unwrap(), plain);
        }

        #[test]
        fn keys_are_checked_and_never_printed() {
            assert_eq!(Keyring::new(1, &[0; 16]).err(), Some(KeyError::Length(16)));
            assert_eq!(
                Keyring::new(1, &A).unwrap().with_old_key(1, &B).err(),
                Some(KeyError::DuplicateId(1))
            );
            let ring = Keyring::new(7, &A).unwrap().with_old_key(3, &B).unwrap();
            let printed = format!("{ring:?} {:?}", sealer(ring.clone()));
            assert!(printed.contains('7') && printed.contains('3'));
            assert!(
                !printed.contains("10, 10") && !printed.contains("0a"),
                "{printed}"
            );
        }

        #[cfg(feature = "compression")]
        #[test]
        fn compressed_then_encrypted() {
            let s = Sealer {
                compression: Some(Compression::lz4()),
                keyring: Some(Keyring::new(1, &A).unwrap()),
            };
            let plain = entry(json(64 << 10));
            let sealed = s.seal(&space(), "k", plain.clone()).unwrap();
            assert_eq!(sealed[4], FLAG_LZ4 | FLAG_AES);
            assert!(sealed.len() * 4 < plain.len());
            assert_eq!(s.open(&space(), "k", sealed).unwrap(), plain);
        }
    }
}
