//! Bob Jenkins' lookup3 hash as the Linux kernel spells it (`include/linux/jhash.h`:
//! `jhash`, `jhash2`, `jhash_3words`). The datapath hashes a flow's tuple with the same
//! function in C to pick a Maglev slot, so `policy-test` can name the backend a given
//! 5-tuple reaches; both sides are checked against the kernel's published vectors.

/// The kernel's `JHASH_INITVAL`.
pub const JHASH_INITVAL: u32 = 0xdead_beef;

#[inline]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

#[inline]
fn final_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// `jhash(key, length, initval)`: bytes, read as little-endian words (the kernel reads
/// native words; the datapath runs on little-endian machines).
pub fn jhash(key: &[u8], initval: u32) -> u32 {
    let len = key.len() as u32;
    let mut a = JHASH_INITVAL.wrapping_add(len).wrapping_add(initval);
    let (mut b, mut c) = (a, a);
    let word = |s: &[u8]| {
        let mut w = [0u8; 4];
        w[..s.len()].copy_from_slice(s);
        u32::from_le_bytes(w)
    };
    let mut k = key;
    while k.len() > 12 {
        a = a.wrapping_add(word(&k[0..4]));
        b = b.wrapping_add(word(&k[4..8]));
        c = c.wrapping_add(word(&k[8..12]));
        mix(&mut a, &mut b, &mut c);
        k = &k[12..];
    }
    if k.is_empty() {
        return c;
    }
    // The kernel adds the last 1..12 bytes byte by byte (a little-endian word of what is
    // left, zero-padded), then mixes.
    a = a.wrapping_add(word(&k[..k.len().min(4)]));
    if k.len() > 4 {
        b = b.wrapping_add(word(&k[4..k.len().min(8)]));
    }
    if k.len() > 8 {
        c = c.wrapping_add(word(&k[8..]));
    }
    final_mix(&mut a, &mut b, &mut c);
    c
}

/// `jhash2(words, length, initval)`: 32-bit words.
pub fn jhash2(words: &[u32], initval: u32) -> u32 {
    let len = words.len() as u32;
    let mut a = JHASH_INITVAL.wrapping_add(len << 2).wrapping_add(initval);
    let (mut b, mut c) = (a, a);
    let mut k = words;
    while k.len() > 3 {
        a = a.wrapping_add(k[0]);
        b = b.wrapping_add(k[1]);
        c = c.wrapping_add(k[2]);
        mix(&mut a, &mut b, &mut c);
        k = &k[3..];
    }
    match k.len() {
        3 => {
            c = c.wrapping_add(k[2]);
            b = b.wrapping_add(k[1]);
            a = a.wrapping_add(k[0]);
        }
        2 => {
            b = b.wrapping_add(k[1]);
            a = a.wrapping_add(k[0]);
        }
        1 => a = a.wrapping_add(k[0]),
        _ => return c,
    }
    final_mix(&mut a, &mut b, &mut c);
    c
}

/// `jhash_3words(a, b, c, initval)`.
pub fn jhash_3words(a: u32, b: u32, c: u32, initval: u32) -> u32 {
    let base = JHASH_INITVAL.wrapping_add(initval).wrapping_add(12);
    let (mut a, mut b, mut c) = (
        a.wrapping_add(base),
        b.wrapping_add(base),
        c.wrapping_add(base),
    );
    final_mix(&mut a, &mut b, &mut c);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// lookup3.c's own self-test vectors (`driver5`): hashlittle("", 0) = 0xdeadbeef,
    /// hashlittle("Four score and seven years ago", 0) = 0x17770551, with initval 1:
    /// 0xcd628161. The kernel's jhash is hashlittle with JHASH_INITVAL = 0xdeadbeef as the
    /// base, which is the same constant lookup3 uses.
    #[test]
    fn matches_lookup3_vectors() {
        assert_eq!(jhash(b"", 0), 0xdead_beef);
        assert_eq!(jhash(b"Four score and seven years ago", 0), 0x1777_0551);
        assert_eq!(jhash(b"Four score and seven years ago", 1), 0xcd62_8161);
    }

    /// jhash2 over words equals jhash over the same bytes (little-endian), for every length
    /// the datapath uses (a 5-tuple is 3 to 9 words).
    #[test]
    fn jhash2_equals_jhash_on_the_same_bytes() {
        let words: Vec<u32> = (0..12u32)
            .map(|i| i.wrapping_mul(0x9e37_79b9) ^ 0x55)
            .collect();
        for n in 0..=12 {
            let bytes: Vec<u8> = words[..n].iter().flat_map(|w| w.to_le_bytes()).collect();
            assert_eq!(jhash2(&words[..n], 7), jhash(&bytes, 7), "{n} words");
        }
    }

    #[test]
    fn jhash_3words_equals_jhash2_of_three_words() {
        assert_eq!(jhash_3words(1, 2, 3, 9), jhash2(&[1, 2, 3], 9));
    }
}
