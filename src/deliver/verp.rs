//! VERP tags: the envelope sender `local+<tag>@domain` of each message
//! names its delivery, so a bounce identifies its recipient and campaign
//! even when it quotes nothing of the original.
//!
//! The tag is lowercase base32 (RFC 4648 alphabet, no padding) of
//!
//! `version (1) | campaign (LEB128) | sealed recipient key (8) | mac (8)`
//!
//! * the recipient key is the first 8 bytes of the SHA-256 of the
//!   normalised address (a prefix of the store's `email_hash`);
//! * `mac = HMAC(k_mac, "verp1|" campaign key)[..8]`;
//! * `sealed = key XOR HMAC(k_pad, "verp1|" mac)[..8]`, so the envelope
//!   sender, which every recipient sees as `Return-Path`, does not carry
//!   a hash anyone could check a guessed address against (the same
//!   synthetic-IV idea as unsubscribe tokens v2).
//!
//! `k_mac` and `k_pad` come from `TIDINGS_UNSUBSCRIBE_SECRET` through
//! [`Signer::derived_key`] with their own labels. 64 bits of MAC are far
//! beyond what anyone can forge by sending mail to our bounce address.
//! Base32 because some MTAs lowercase local parts; a tag of a small
//! campaign is 29–32 characters, at most [`MAX_TAG_LEN`].

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::deliver::unsubscribe::{Signer, email_hash};

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
const KEY_LEN: usize = 8;
const MAC_LEN: usize = 8;
/// The longest tag: a campaign id of 9 LEB128 bytes (any i64).
pub const MAX_TAG_LEN: usize = base32_len(1 + 9 + KEY_LEN + MAC_LEN);
// The config checks `bounces.address` against the same length.
const _: () = assert!(MAX_TAG_LEN == crate::config::VERP_TAG_MAX);
/// RFC 5321 4.5.3.1.1: a local part is at most 64 octets.
pub use crate::config::MAX_LOCAL_PART;

const fn base32_len(bytes: usize) -> usize {
    (bytes * 8).div_ceil(5)
}

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// The first bytes of the SHA-256 of the normalised address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecipientKey(pub [u8; KEY_LEN]);

impl RecipientKey {
    pub fn of(email: &str) -> RecipientKey {
        let h = email_hash(email);
        let mut k = [0u8; KEY_LEN];
        k.copy_from_slice(&h[..KEY_LEN]);
        RecipientKey(k)
    }

    /// Whether `email` is the address this key was made from (up to a
    /// 1 in 2^64 chance of another address sharing the prefix).
    pub fn matches(&self, email: &str) -> bool {
        RecipientKey::of(email) == *self
    }

    /// Lowercase hex: a prefix of the store's `email_hash` column.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What a valid tag says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The campaign's id; `None` for a message sent outside a campaign
    /// (`send --to`, a CSV send without a journal).
    pub campaign: Option<i64>,
    pub recipient: RecipientKey,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerpError {
    #[error(
        "VERP tag `{0}` is not one of ours: not base32, or the wrong length (garbled, or made by another sender)"
    )]
    Garbled(String),
    #[error("VERP tag `{0}` has an unknown version")]
    Version(String),
    #[error(
        "VERP tag `{0}` has a wrong signature: forged, or made with another TIDINGS_UNSUBSCRIBE_SECRET"
    )]
    Signature(String),
}

/// Makes and checks tags.
#[derive(Clone)]
pub struct Verp {
    mac: HmacSha256,
    pad: HmacSha256,
}

impl std::fmt::Debug for Verp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verp(***)")
    }
}

impl Verp {
    /// Keys derived from the unsubscribe secret the signer holds.
    pub fn from_signer(signer: &Signer) -> Verp {
        let key = |label: &[u8]| {
            HmacSha256::new_from_slice(&signer.derived_key(label)).expect("HMAC takes any length")
        };
        Verp {
            mac: key(b"tidings verp tag v1: mac"),
            pad: key(b"tidings verp tag v1: pad"),
        }
    }

    /// For tests and tools: the keys of `secret`.
    pub fn new(secret: &[u8]) -> Verp {
        Verp::from_signer(&Signer::new(secret, ""))
    }

    fn mac_of(&self, campaign: &[u8], key: &[u8; KEY_LEN]) -> [u8; MAC_LEN] {
        let mut m = self.mac.clone();
        m.update(b"verp1|");
        m.update(campaign);
        m.update(key);
        let out = m.finalize().into_bytes();
        let mut t = [0u8; MAC_LEN];
        t.copy_from_slice(&out[..MAC_LEN]);
        t
    }

    fn pad_of(&self, mac: &[u8]) -> [u8; KEY_LEN] {
        let mut m = self.pad.clone();
        m.update(b"verp1|");
        m.update(mac);
        let out = m.finalize().into_bytes();
        let mut p = [0u8; KEY_LEN];
        p.copy_from_slice(&out[..KEY_LEN]);
        p
    }

    /// The tag for one delivery; `campaign` `None` (or a negative id,
    /// which the journal never makes) is encoded as 0.
    pub fn encode(&self, campaign: Option<i64>, recipient: RecipientKey) -> String {
        let campaign = leb128(campaign.filter(|c| *c > 0).unwrap_or(0) as u64);
        let mac = self.mac_of(&campaign, &recipient.0);
        let pad = self.pad_of(&mac);
        let mut bytes = Vec::with_capacity(1 + campaign.len() + KEY_LEN + MAC_LEN);
        bytes.push(VERSION);
        bytes.extend_from_slice(&campaign);
        bytes.extend(recipient.0.iter().zip(pad).map(|(k, p)| k ^ p));
        bytes.extend_from_slice(&mac);
        base32(&bytes)
    }

    /// The tag for `email` in `campaign`.
    pub fn encode_for(&self, campaign: Option<i64>, email: &str) -> String {
        self.encode(campaign, RecipientKey::of(email))
    }

    /// Checks a tag (case-insensitive: some MTAs change a local part's
    /// case); any defect is an error, never a guess.
    pub fn verify(&self, tag: &str) -> Result<Delivery, VerpError> {
        let garbled = || VerpError::Garbled(tag.to_string());
        if tag.len() > MAX_TAG_LEN {
            return Err(garbled());
        }
        let bytes = unbase32(tag).ok_or_else(garbled)?;
        let (&version, rest) = bytes.split_first().ok_or_else(garbled)?;
        if version != VERSION {
            return Err(VerpError::Version(tag.to_string()));
        }
        let (campaign, used) = read_leb128(rest).ok_or_else(garbled)?;
        let rest = &rest[used..];
        if rest.len() != KEY_LEN + MAC_LEN {
            return Err(garbled());
        }
        let (sealed, mac) = rest.split_at(KEY_LEN);
        let pad = self.pad_of(mac);
        let mut key = [0u8; KEY_LEN];
        for (i, k) in key.iter_mut().enumerate() {
            *k = sealed[i] ^ pad[i];
        }
        let mut m = self.mac.clone();
        m.update(b"verp1|");
        m.update(&bytes[1..1 + used]);
        m.update(&key);
        // Constant time: a forger learns nothing from how long it took.
        m.verify_truncated_left(mac)
            .map_err(|_| VerpError::Signature(tag.to_string()))?;
        let campaign = i64::try_from(campaign).map_err(|_| garbled())?;
        Ok(Delivery {
            campaign: (campaign > 0).then_some(campaign),
            recipient: RecipientKey(key),
        })
    }
}

pub use crate::config::BounceAddress;

fn leb128(mut n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(3);
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// The number and how many bytes it took; `None` when it runs off the end
/// or is longer than a u64 (or not minimal: one encoding per number, so a
/// tag cannot be varied without breaking the MAC's input).
fn read_leb128(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut n: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        let part = u64::from(b & 0x7f);
        if i == 9 && part > 1 {
            return None;
        }
        n |= part << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return None;
            }
            return Some((n, i + 1));
        }
    }
    None
}

fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(base32_len(bytes.len()));
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn unbase32(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for c in text.bytes() {
        let v = match c.to_ascii_lowercase() {
            c @ b'a'..=b'z' => c - b'a',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        buffer = (buffer << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    // Leftover bits must be zero padding: otherwise two spellings decode
    // to the same bytes.
    if bits >= 5 || buffer & ((1 << bits) - 1) != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_case() {
        let v = Verp::new(b"0123456789abcdef-secret");
        for campaign in [
            None,
            Some(1),
            Some(127),
            Some(128),
            Some(40_000),
            Some(i64::MAX),
        ] {
            let tag = v.encode_for(campaign, " Ana@Example.org");
            assert!(tag.len() <= MAX_TAG_LEN, "{tag}");
            assert!(tag.bytes().all(|b| ALPHABET.contains(&b)), "{tag}");
            let d = v.verify(&tag).unwrap();
            assert_eq!(d.campaign, campaign);
            assert!(d.recipient.matches("ana@example.org"));
            assert!(!d.recipient.matches("bob@example.org"));
            assert_eq!(v.verify(&tag.to_ascii_uppercase()).unwrap(), d);
        }
        let small = v.encode_for(Some(42), "ana@example.org");
        assert_eq!(small.len(), 29, "{small}");
    }

    #[test]
    fn forged_and_garbled_tags_are_refused() {
        let v = Verp::new(b"0123456789abcdef-secret");
        let tag = v.encode_for(Some(7), "ana@example.org");
        // Another secret.
        let other = Verp::new(b"another secret, 16+ chars");
        assert_eq!(
            other.verify(&tag).unwrap_err().to_string(),
            format!(
                "VERP tag `{tag}` has a wrong signature: forged, or made with another TIDINGS_UNSUBSCRIBE_SECRET"
            )
        );
        // Every single-character change fails.
        for i in 0..tag.len() {
            let mut b = tag.clone().into_bytes();
            b[i] = if b[i] == b'a' { b'b' } else { b'a' };
            let t = String::from_utf8(b).unwrap();
            assert!(v.verify(&t).is_err(), "{t}");
        }
        assert!(matches!(v.verify(""), Err(VerpError::Garbled(_))));
        assert!(matches!(
            v.verify("hello-world"),
            Err(VerpError::Garbled(_))
        ));
        assert!(matches!(v.verify(&tag[..20]), Err(VerpError::Garbled(_))));
        assert!(matches!(
            v.verify(&format!("{tag}aaaaaaaaaaaaaaaaaaaa")),
            Err(VerpError::Garbled(_))
        ));
        // An unsigned tag of the right shape: campaign 7, key zero, mac zero.
        let unsigned = base32(&[1, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(v.verify(&unsigned), Err(VerpError::Signature(_))));
        let version = base32(&[2, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(v.verify(&version), Err(VerpError::Version(_))));
    }

    #[test]
    fn tags_do_not_show_the_address_hash() {
        let v = Verp::new(b"0123456789abcdef-secret");
        let key = RecipientKey::of("ana@example.org");
        let a = v.encode(Some(1), key);
        let b = v.encode(Some(2), key);
        // The sealed key differs between campaigns: nothing links them.
        assert_ne!(&a[3..16], &b[3..16]);
        assert!(!a.contains(&base32(&key.0)[..10]));
    }

    #[test]
    fn bounce_address() {
        let b = BounceAddress::parse("bounces@News.Example.org").unwrap();
        let tag = "abc234";
        let addr = b.with_tag(tag);
        assert_eq!(addr, "bounces+abc234@news.example.org");
        assert_eq!(b.tag_of("BOUNCES+ABC234@news.example.org"), Some("ABC234"));
        assert_eq!(b.tag_of("bounces@news.example.org"), None);
        assert_eq!(b.tag_of("other+abc@news.example.org"), None);
        assert_eq!(b.tag_of("bounces+abc@example.org"), None);
        let long = "a".repeat(22);
        assert_eq!(
            BounceAddress::parse(&format!("{long}@x.org")).unwrap_err(),
            format!(
                "`{long}@x.org`: its local part `{long}` is 22 characters; with `+` and a tag of up to 42 it must stay within 64, so use at most 21 (e.g. `bounces`)"
            )
        );
        assert!(BounceAddress::parse("bounces").is_err());
        assert!(BounceAddress::parse("bo+unces@x.org").is_err());
        // The longest address stays within the limit.
        let v = Verp::new(b"k");
        let b = BounceAddress::parse(&format!("{}@x.org", "a".repeat(21))).unwrap();
        let full = b.with_tag(&v.encode_for(Some(i64::MAX), "a@b.c"));
        assert!(full.split('@').next().unwrap().len() <= MAX_LOCAL_PART);
    }

    #[test]
    fn base32_is_canonical() {
        for n in 0..40u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(unbase32(&base32(&bytes)).unwrap(), bytes);
        }
        // Non-zero padding bits are a second spelling: refused.
        assert_eq!(base32(&[0xff]), "74");
        assert!(unbase32("75").is_none());
    }
}
