//! `hash64`, the hash of event and device ids that checkpoints keep (the dedup memory, the
//! device list, queued entries): SipHash-1-3 with both keys zero over the id's bytes and the
//! `0xFF` that `str`'s `Hash` appends, which is what std's `DefaultHasher` gave when the first
//! checkpoints were written. std does not promise to keep that algorithm, so it comes from the
//! `siphasher` crate, and the tests pin it to fixed values.

use std::hash::Hasher;

/// SipHash-1-3, keys (0, 0), of `s`'s bytes followed by `0xFF`. Stored in checkpoints:
/// never change it (a new function needs a new checkpoint format and a migration).
pub fn hash64(s: &str) -> u64 {
    hash64_bytes(s.as_bytes())
}

/// The same over any bytes (for a payload's fingerprint in a dead letter): equal to `hash64`
/// of the same bytes as a string.
#[inline]
pub fn hash64_bytes(bytes: &[u8]) -> u64 {
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0, 0);
    h.write(bytes);
    h.write_u8(0xFF);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::hash64;

    /// Values the function has always given (computed with std's `DefaultHasher` on Rust
    /// 1.95, which checkpoints since the first release were written with). They must never
    /// change: a checkpoint's dedup memory and device list hold them.
    #[test]
    fn pinned_values() {
        let pinned: [(&str, u64); 6] = [
            ("", PINNED[0]),
            ("a", PINNED[1]),
            ("hh-000001", PINNED[2]),
            ("hh-000001-hub", PINNED[3]),
            ("1234567", PINNED[4]),
            ("e-3-4c1f2a9e-0b7d-4e55-9a61-2f0c8d3b7e10", PINNED[5]),
        ];
        for (s, want) in pinned {
            assert_eq!(hash64(s), want, "{s:?}");
        }
    }

    const PINNED: [u64; 6] = [
        0x3040_6ea5_23c5_3def,
        0x719b_50b9_a4f0_e9f3,
        0x461a_7791_3844_3a2f,
        0x809e_863d_83e2_d734,
        0xb9a4_f30e_757f_e044,
        0x244f_0706_0043_33c3,
    ];

    /// While std's `DefaultHasher` still is SipHash-1-3 with zero keys, the two agree on every
    /// length around the word boundaries and on text that is not ASCII.
    #[test]
    fn agrees_with_std_default_hasher() {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let text = "hh-0123456789-abcdefghijklmnopqrstuvwxyz-长者-护理-ÄÖÜ-0123456789";
        let mut checked = 0;
        for start in 0..text.len() {
            for end in start..=text.len() {
                let Some(s) = text.get(start..end) else {
                    continue;
                };
                let mut h = DefaultHasher::new();
                s.hash(&mut h);
                assert_eq!(hash64(s), h.finish(), "{s:?}");
                checked += 1;
            }
        }
        assert!(checked > 1000, "{checked}");
    }
}
