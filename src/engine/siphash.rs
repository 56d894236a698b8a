//! `hash64`, the hash of event and device ids that checkpoints keep (the dedup memory, the
//! device list, queued entries). It was std's `DefaultHasher`, whose algorithm Rust does not
//! promise to keep from one release to the next: a toolchain upgrade could have silently
//! changed every stored value (devices seen as new, silence alarms for the old ones). This is
//! the same function written out, SipHash-1-3 with both keys zero over the id's bytes and the
//! `0xFF` that `str`'s `Hash` appends, so every checkpoint written so far reads the same and
//! no later toolchain can change it. The tests pin it to fixed values and, while std still
//! agrees, to `DefaultHasher`. Written for one whole string at once it also skips the
//! streaming buffer of `Hasher::write` (fewer instructions per event on the hot path).

const K0: u64 = 0x736f_6d65_7073_6575;
const K1: u64 = 0x646f_7261_6e64_6f6d;
const K2: u64 = 0x6c79_6765_6e65_7261;
const K3: u64 = 0x7465_6462_7974_6573;

#[inline(always)]
fn round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

#[inline(always)]
fn compress(v: &mut [u64; 4], m: u64) {
    v[3] ^= m;
    round(v);
    v[0] ^= m;
}

/// SipHash-1-3, keys (0, 0), of `s`'s bytes followed by `0xFF`. Stored in checkpoints:
/// never change it (a new function needs a new checkpoint format and a migration).
pub fn hash64(s: &str) -> u64 {
    hash64_bytes(s.as_bytes())
}

/// The same over any bytes (for a payload's fingerprint in a dead letter): equal to `hash64`
/// of the same bytes as a string.
#[inline(always)]
pub fn hash64_bytes(bytes: &[u8]) -> u64 {
    let mut v = [K0, K1, K2, K3];
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        compress(&mut v, u64::from_le_bytes(w.try_into().expect("8 bytes")));
    }
    // The rest (0 to 7 bytes) and the 0xFF terminator: a whole word when the rest is 7.
    let rest = words.remainder();
    let mut tail = 0u64;
    for (i, b) in rest.iter().enumerate() {
        tail |= (*b as u64) << (8 * i);
    }
    tail |= 0xFF << (8 * rest.len());
    let total = bytes.len() as u64 + 1;
    if rest.len() == 7 {
        compress(&mut v, tail);
        tail = 0;
    }
    let b = (total << 56) | tail;
    compress(&mut v, b);
    v[2] ^= 0xFF;
    round(&mut v);
    round(&mut v);
    round(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
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
